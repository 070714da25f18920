"""Continual self-supervised pre-training of a new language (Kessler, Thomas, Karout, ICASSP 2022).

A PretrainingModel knows the tasks (languages) it has learnt: one contrastive head each. Learning task
``t`` after the earlier ones, with one of:

=================  =====================================================================================
``warm-start``     keep training all of wav2vec 2.0 (CNN included, with its gradient scale) on the new
                   language; the new head starts as a copy of the previous one
``multihead``      CNN frozen; a task-specific head (quantizer, target and context projections) per task,
                   copied from the previous task's; the transformer trains (with its own learning rate)
``multihead-l2``   multihead + eta * ||theta - theta*_{t-1}||^2 on the transformer parameters, pulling them
                   toward their values after the previous task
``cwav2vec``       CNN and transformer frozen; a language adapter set (two adapters per layer) with its own
                   layer norms, and the task's head, train. Nothing an earlier task uses changes, so earlier
                   tasks are never forgotten (bit for bit)
=================  =====================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import AdapterConfig, adapter_parameters, add_adapter
from wavadapt.model.pretraining import PretrainingModel
from wavadapt.training.pretrain import default_trainable

CONTINUAL_METHODS = ("warm-start", "multihead", "multihead-l2", "cwav2vec")


@dataclass
class ContinualConfig:
    """How a new task is learnt on top of the tasks a model already has."""

    method: str = "cwav2vec"
    l2_weight: float = 1.0
    """eta of multihead-l2."""
    adapter_size: int = 256
    """cwav2vec's language adapter bottleneck."""

    def __post_init__(self):
        if self.method not in CONTINUAL_METHODS:
            raise WavadaptError(f"unknown continual method {self.method!r}; choose from {', '.join(CONTINUAL_METHODS)}")


def l2_toward(params: dict[str, nn.Parameter], weight: float) -> Callable[[], torch.Tensor]:
    """weight * ||theta - theta*||^2 over ``params``, theta* their values now (the previous task's optimum)."""
    anchors = {k: p.detach().clone() for k, p in params.items()}

    def penalty() -> torch.Tensor:
        return weight * sum(((p - anchors[k]) ** 2).sum() for k, p in params.items())

    return penalty


def prepare_continual(model: PretrainingModel, task: str, config: ContinualConfig
                      ) -> tuple[dict[str, nn.Parameter], Callable[[], torch.Tensor] | None]:
    """Add ``task`` to ``model`` for ``config.method``; return what trains (by model parameter name) and the
    regulariser to add to the loss (multihead-l2) or None."""
    if not model.tasks:
        raise WavadaptError("continual pre-training needs a model that has learnt a first task (wavadapt pretrain)")
    if task in model.heads:
        raise WavadaptError(f"the model has already learnt task {task!r} (it knows {model.tasks}); "
                            "choose a new task name or resume that run")
    previous = model.tasks[-1]
    backbone = model.backbone
    if config.method == "cwav2vec":
        add_adapter(backbone, task, AdapterConfig(size=config.adapter_size))
        model.add_head(task, init_from=previous, adapters=(task,))
        model.config = replace(model.config, feature_grad_mult=0.0)
        trainable = {f"backbone.{k}": p for k, p in adapter_parameters(backbone, task).items()}
        trainable |= {f"heads.{task}.{k}": p for k, p in model.heads[task].named_parameters()}
        return trainable, None
    model.add_head(task, init_from=previous)
    if config.method != "warm-start":  # the multi-head baselines freeze the CNN
        model.config = replace(model.config, feature_grad_mult=0.0)
    trainable = default_trainable(model, task)
    if config.method != "multihead-l2":
        return trainable, None
    transformer = {k: p for k, p in trainable.items() if k.startswith("backbone.encoder.")}
    return trainable, l2_toward(transformer, config.l2_weight)
