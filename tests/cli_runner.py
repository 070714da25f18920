"""``wavadapt ARGS`` as a user types it, through the console entry point, in the test's process."""

import sys

import pytest

from wavadapt.cli import main


def exit_status(*args) -> int:
    """Run ``wavadapt ARGS`` through the real entry point (main); its output goes where pytest captures it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(sys, "argv", ["wavadapt", *map(str, args)])
        try:
            main()
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else int(e.code is not None)
    return 0


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``wavadapt ARGS`` through the real entry point: (exit status, stdout, stderr)."""
    code = exit_status(*args)
    out, err = capsys.readouterr()
    return code, out, err
