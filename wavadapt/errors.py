"""Errors that reach the user as one clear line (the CLI prints them without a traceback), and warnings too."""

import logging
import sys


class WavadaptError(Exception):
    """Base class: the message names the file or object and the problem."""


class AudioError(WavadaptError):
    """An audio file could not be decoded or is unusable."""


class TruncatedAudioError(AudioError):
    """An audio file holds less audio than its header declares: a cut-off copy or download."""


class CorpusError(WavadaptError):
    """A corpus directory or manifest is missing or not in a known layout."""


class CheckpointError(WavadaptError):
    """A checkpoint or adapter file cannot be loaded."""


class WarningLines(logging.Handler):
    """Warnings (a skipped file) as one ``warning: ...`` line of their own on stderr, above any progress bar."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(f"warning: {record.getMessage()}", file=sys.stderr)
