"""The `wavadapt` command: each command is a typed function whose signature is its command line (registered by
the stage modules beside this one); errors become one line, never a traceback."""

import logging
import os
from typing import Annotated

import typer

from wavadapt import __version__
from wavadapt.data.stores.hf_datasets import TEXT_COLUMN_ENV
from wavadapt.errors import WarningLines, WavadaptError


class _Commands(typer.core.TyperGroup):
    """Help that names each value as a speech engineer reads it (FILES, SECONDS, N, PATH), not by its Python type
    (typer would print <list[Path]> and <bool>)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for command in [self, *self.commands.values()]:
            for param in command.params:
                if isinstance(param, typer.core.TyperArgument):
                    param.__class__ = _Argument
                    param.metavar = param.metavar or param.name.upper()
                elif param.metavar is None:
                    param.metavar = _metavar(param)


class _Argument(typer.core.TyperArgument):
    """An argument shown by its name alone (FILES..., [FILES]... when optional), as click shows it."""

    def display_type_rich(self, ctx) -> None:
        return None

    def _usage_display_name(self) -> str:
        name = self.metavar if self.required else f"[{self.metavar}]"
        return name + ("..." if self.nargs != 1 else "")


def _metavar(option) -> str:
    if option.is_flag:
        return ""
    kind = option.bare_type().removeprefix("list[").removesuffix("]")  # a repeatable option names one value
    if kind == "float":
        return "SECONDS" if "seconds" in option.name else "NUMBER"
    return {"int": "N", "Path": "PATH"}.get(kind, "TEXT")


app = typer.Typer(
    cls=_Commands,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Bottleneck adapters for wav2vec 2.0 / HuBERT / WavLM: adapter transfer and continual pre-training.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wavadapt {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the Python traceback of an error (also: "
                                        "WAVADAPT_DEBUG=1).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    text_column: Annotated[str | None, typer.Option(metavar="NAME", help="The transcript column of Hugging Face "
                                                    "datasets (default: the first of text, sentence, transcript, "
                                                    "transcription, normalized_text), before the command: wavadapt "
                                                    "--text-column raw_transcription check DATA.")] = None,
) -> None:
    if debug:
        os.environ["WAVADAPT_DEBUG"] = "1"
    if text_column:
        os.environ[TEXT_COLUMN_ENV] = text_column  # every corpus the command reads, in its worker processes too


def main() -> None:
    """Console entry point: an error becomes one ``error: ...`` line on stderr and a non-zero exit status;
    ``--debug`` (or WAVADAPT_DEBUG=1) shows the Python traceback instead."""
    logger = logging.getLogger("wavadapt")
    if not any(isinstance(h, WarningLines) for h in logger.handlers):
        logger.addHandler(WarningLines())
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except WavadaptError as e:
        if _debug():
            raise
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
    except OSError as e:  # a folder to write into that is missing, a disk that is full: the file and the cause
        if _debug():
            raise
        where = f"{e.filename}: " if e.filename else ""
        typer.echo(f"error: {where}{e.strerror or e}", err=True)
        raise SystemExit(1) from None
    except Exception as e:  # a bug, or a failure wavadapt does not know yet: still one line, never a traceback
        if _debug():
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        typer.echo(f"error: {type(e).__name__}{': ' + reason if reason else ''} (run with --debug for the "
                   "traceback)", err=True)
        raise SystemExit(2) from None


def _debug() -> bool:
    return os.environ.get("WAVADAPT_DEBUG", "") not in ("", "0")
