"""The command line's help reads as a speech engineer's tool, not as Python: every command and option described,
values named FILES / SECONDS / PATH instead of their Python types, `-h` and `--version`, and one command module
per stage under ~300 lines."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import wavadapt
from wavadapt.cli import app

COMMANDS = typer.main.get_command(app).commands
PYTHON_TYPES = re.compile(r"<(list\[\w+\]|str|int|float|bool|path|Path)>|\{[A-Z_]+\}")


def help_text(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "wavadapt", *args], capture_output=True, text=True, check=True,
                          env={"COLUMNS": "80", "PATH": ""}).stdout


def test_the_overview_lists_every_command_with_a_whole_short_summary():
    text = help_text("-h")
    assert text == help_text("--help")
    listed = text.split("Commands:")[1].splitlines()
    for name, command in COMMANDS.items():
        line = next(line for line in listed if line.split()[:1] == [name])
        assert not line.endswith("..."), line  # the summary fits, it is not cut
        assert command.help.split("\n\n")[0].strip() in line


def test_version():
    assert help_text("--version").strip() == f"wavadapt {wavadapt.__version__}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_described_without_python_types(name):
    command = COMMANDS[name]
    for param in command.params:
        assert param.help, f"{name}: {param.name} has no help"
        assert not re.search(r"\b[a-z]+_[a-z_]+\(|`\w+_\w+`", param.help), param.help  # no Python names
    result = CliRunner().invoke(app, [name, "-h"], prog_name="wavadapt", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert not PYTHON_TYPES.search(result.output), PYTHON_TYPES.search(result.output)
    assert f"Usage: wavadapt {name} [OPTIONS]" in result.output


def test_one_small_module_per_stage():
    modules = {p.stem: len(p.read_text().splitlines()) for p in Path(wavadapt.cli.__file__).parent.glob("*.py")}
    assert {"data", "train", "evaluate", "serve", "models", "experiments", "options"} <= set(modules)
    assert max(modules.values()) <= 300, modules


def test_the_beam_defaults_the_help_states_are_the_decoders():
    from wavadapt.decoding import DecoderConfig

    text = " ".join(CliRunner().invoke(app, ["evaluate", "-h"], prog_name="wavadapt", env={"COLUMNS": "200"})
                    .output.split())
    weight = re.search(r"--lm-weight NUMBER Beam search: weight of the LM's log10 probabilities \(default ([\d.]+):",
                       text)
    score = re.search(r"--word-score NUMBER Beam search: added per word, an insertion bonus \(default ([\d.]+):", text)
    assert (float(weight.group(1)), float(score.group(1))) == (DecoderConfig().lm_weight, DecoderConfig().word_score)
