"""Commands that run whole experiments: run a recipe, the demo, the report."""

import os
from pathlib import Path
from typing import Annotated

import typer

from wavadapt.cli.options import (
    Jobs,
)
from wavadapt.cli.program import app

ResumeExperiment = Annotated[bool, typer.Option("--resume", help="Continue the experiment in --out: finished runs "
                                                "are kept, interrupted ones continue (the same recipe only).")]
OverwriteExperiment = Annotated[bool, typer.Option("--overwrite", help="Replace the experiment in --out: its runs "
                                                   "are deleted.")]


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Experiment directory: params.json, finetune/<lang>/<name>/, "
                                            "continual/<method>/, evaluate-continual/ (any may be missing).")],
    out: Annotated[Path | None, typer.Option(help="Where report.md and the plots go (default: RUN_DIR/report).")] = (
        None
    ),
    target_cer: Annotated[float, typer.Option(help="Validation CER (a fraction) whose first logged update each "
                                              "fine-tuning run reports.")] = 0.5,
) -> None:
    """Write an experiment's report (Markdown + plots).

    Parameters, WER / CER, top-N curves, updates to a target CER, forgetting and continual pre-training efficiency,
    each with its plot; prints the fine-tuning results.
    """
    from wavadapt.experiments.report import write_report

    typer.echo(write_report(run_dir, out, target_cer).summary)


@app.command("run")
def run_recipe(
    recipe: Annotated[str, typer.Argument(help="A YAML recipe file, or the name of a packaged one (demo, "
                                          "thomas2022_adapters, kessler2022_cwav2vec): corpus, backbone, pretrain, "
                                          "params, finetune, continual, evaluate_continual, report.")],
    out: Annotated[Path, typer.Option(help="Experiment directory (the layout `wavadapt report` reads).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the full plan, then run every step at toy "
                                          "scale (synthetic corpus, tiny backbone, 1 update) to check the "
                                          "wiring.")] = False,
    jobs: Jobs = 1,
    resume: ResumeExperiment = False,
    overwrite: OverwriteExperiment = False,
) -> None:
    """Run an experiment grid from a YAML recipe.

    Pre-training, fine-tuning sweeps, continual pre-training, their evaluation and the report, as the recipe lists
    them. An interrupted experiment continues with --resume: finished runs are kept.
    """
    from wavadapt.experiments.grid import load_experiment, recipe_path, run_experiment

    run_experiment(load_experiment(recipe_path(recipe)), out, dry_run=dry_run, echo=typer.echo, jobs=jobs,
                   resume=resume, overwrite=overwrite)


# --- demo ---


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Experiment directory: corpus, runs, report.")] = Path("demo_out"),
    full: Annotated[bool, typer.Option(help="The larger synthetic grid (recipe demo_full: English + Spanish by "
                                       "espeak-ng, more updates, top-N sweeps, both languages fine-tuned), for a GPU "
                                       "or hours of CPU.")] = False,
    jobs: Annotated[int | None, typer.Option(help="Runs at a time, each a process of one thread (default: one per "
                                             "CPU core; one on a GPU).")] = None,
    resume: ResumeExperiment = False,
    overwrite: OverwriteExperiment = False,
) -> None:
    """Run the packaged demo on real speech, end to end.

    On 2 CPU cores: fetch the Dutch and Czech actors of Fish Fillets NG from Debian's packages, fine-tune the
    shipped tiny wav2vec 2.0 that has heard Dutch (tiny-nl-real) fully, from scratch and with adapters, continue it
    on Czech with the four continual methods, probe every checkpoint on Dutch, and write the report.
    """
    import torch

    from wavadapt.experiments.grid import load_experiment, recipe_path, run_experiment

    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    run_experiment(load_experiment(recipe_path("demo_full" if full else "demo")), out, echo=typer.echo, jobs=jobs,
                   resume=resume, overwrite=overwrite)
