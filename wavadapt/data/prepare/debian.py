"""Fetch Debian packages that hold transcribed recordings and unpack them: a recipe's first step."""

import os
import shutil
import subprocess
from pathlib import Path

from wavadapt.errors import CorpusError


def unpack_packages(names: list[str], into: Path, packages_dir: Path | None = None) -> dict[str, str]:
    """Unpack the ``.deb`` of each package in ``names`` into ``into`` (``dpkg-deb -x``); return their versions.

    The ``.deb`` files come from ``packages_dir`` when given (offline: fetched before with ``apt-get
    download``), else ``apt-get download`` fetches them into ``into/debs``, after an ``apt-get update``
    when apt's lists do not know a package yet and this user may refresh them.
    """
    debs = into / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    versions = {}
    for name in names:
        deb = _find_deb(packages_dir, name) if packages_dir is not None else _download(name, debs)
        _run(["dpkg-deb", "-x", str(deb), str(into)], f"{deb}: cannot unpack")
        versions[name] = _run(["dpkg-deb", "-f", str(deb), "Version"], f"{deb}: cannot read its version").strip()
    return versions


def _find_deb(packages_dir: Path, name: str) -> Path:
    found = sorted(packages_dir.glob(f"{name}_*.deb"))
    if not found:
        raise CorpusError(f"{packages_dir}: no {name}_*.deb (fetch it with `apt-get download {name}`)")
    return found[-1]


def _download(name: str, debs: Path) -> Path:
    result = _apt_download(name, debs)
    if result.returncode != 0 and os.geteuid() == 0:  # apt's lists may predate the package, or be empty
        _run(["apt-get", "update", "-qq"], "apt-get update failed")
        result = _apt_download(name, debs)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if result.returncode != 0 or not found:
        reason = (result.stderr.strip().splitlines() or ["no .deb written"])[-1]
        raise CorpusError(f"cannot fetch the Debian package {name} with `apt-get download` ({reason})")
    return found[-1]


def _apt_download(name: str, debs: Path) -> subprocess.CompletedProcess:
    if shutil.which("apt-get") is None:
        raise CorpusError(f"cannot fetch the Debian package {name}: apt-get is not installed (fetch its .deb "
                          "elsewhere and pass its folder with --packages)")
    return subprocess.run(["apt-get", "download", "-qq", name], cwd=debs, capture_output=True, text=True)


def _run(command: list[str], what: str) -> str:
    if shutil.which(command[0]) is None:
        raise CorpusError(f"{what}: {command[0]} is not installed")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CorpusError(f"{what} ({(result.stderr.strip().splitlines() or [f'exit {result.returncode}'])[-1]})")
    return result.stdout
