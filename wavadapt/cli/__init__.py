"""`wavadapt <command>`: one module per stage's commands, registered on `program.app` in the order of the flow
(data, training, evaluation, serving, models, experiments), which is the order `wavadapt -h` lists them in."""

# ruff: noqa: F401, I001  (imported for the commands they register, in this order)
from wavadapt.cli import data, train, pretrain, evaluate, serve, models, experiments
from wavadapt.cli.program import app, main

__all__ = ["app", "main"]
