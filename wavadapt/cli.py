"""`wavadapt <command>`: each command is a typed function whose signature is its command line."""

from pathlib import Path
from typing import Annotated

import typer

from wavadapt.errors import WavadaptError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Bottleneck adapters for wav2vec 2.0 / HuBERT / WavLM: adapter transfer and continual pre-training.",
)


# --- data commands ---


# --- model commands ---


def main() -> None:
    """Console entry point: known errors become one line on stderr and exit status 1."""
    try:
        app()
    except WavadaptError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
