"""A run folder holds one run: a new run is refused where one is already, and each run says where it came from.

Every command that writes a run (finetune, pretrain, continual, evaluate-continual, run, demo) claims its folder
first: one that holds a run already is refused unless the user asked to continue it (``--resume``) or to replace
it (``--overwrite``), so a finished run is never overwritten, nor two runs' logs mixed, without a word.
"""

import datetime
import os
import shlex
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

from wavadapt.data.records import is_url
from wavadapt.errors import WavadaptError

KEPT_ON_OVERWRITE = ("feature_cache",)
"""Kept when a run is replaced: a feature cache is keyed by the CNN and utterances that made it, so it is still
right for whatever run comes next."""


class RunFolderError(WavadaptError):
    """The output folder holds a run, and the user said neither to continue it nor to replace it."""


RUN_MARKERS = ("run.json", "checkpoints")
"""What shows that a folder holds a training run."""


def claim(out_dir: str | Path, markers: tuple[str, ...] = RUN_MARKERS, *, resume: bool = False,
          overwrite: bool = False, can_resume: bool = True) -> None:
    """Make ``out_dir`` ready for a new run, or refuse: a folder holding any of ``markers`` holds a run already.
    With ``resume`` that run continues and nothing is touched; with ``overwrite`` the folder is emptied (but for
    :data:`KEPT_ON_OVERWRITE`). Under torchrun only rank 0 claims: the folder is shared by every process of every
    node, and rank 0 alone writes into it."""
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in the output folder, --overwrite replaces it: give one")
    if int(os.environ.get("RANK", 0)) != 0:
        return
    found = [name for name in markers if (out_dir / name).exists()]
    if resume or not found:
        return
    if not overwrite:
        how = "--resume continues it, --overwrite replaces it" if can_resume else "--overwrite replaces it"
        raise RunFolderError(f"{out_dir} holds a run already ({', '.join(found)}): {how}, or choose another folder")
    for entry in out_dir.iterdir():
        if entry.name in KEPT_ON_OVERWRITE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def provenance() -> dict:
    """What every run records of how it was made: wavadapt's version, the command line and the start time."""
    return {"wavadapt": version("wavadapt"), "command": shlex.join(sys.argv),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def data_source(corpus: str | Path, split: str, language: str) -> dict:
    """Where a run's training data came from, as its run.json records it."""
    where = str(corpus) if is_url(str(corpus)) or "{" in str(corpus) else str(Path(corpus).resolve())
    return {"corpus": where, "split": split, "language": language}
