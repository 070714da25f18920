"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class WavadaptError(Exception):
    """Base class: the message names the file or object and the problem."""


class AudioError(WavadaptError):
    """An audio file could not be decoded or is unusable."""


class CorpusError(WavadaptError):
    """A corpus directory or manifest is missing or not in a known layout."""


class CheckpointError(WavadaptError):
    """A checkpoint or adapter file cannot be loaded."""
