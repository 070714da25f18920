"""Spoken language identification on the frozen backbone: an utterance classifier over one encoder layer.

The frames entering encoder layer ``layer`` (the encoder's output when ``layer`` is the number of layers) are pooled
over the utterance's own frames into their mean and standard deviation (statistics pooling, as x-vector and ECAPA
language identifiers do), layer-normalised and mapped to one score per language by a linear layer. Nothing of the
backbone trains, so the layers below ``layer`` are the same computation for identification and for every task whose
adapters start at or above it: routing by identification shares them (`CTCModel.forward_routed`).
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import encoder_of


class LanguageId(nn.Module):
    """(B, T, D) frames of one layer and (B,) valid lengths -> (B, languages) scores."""

    def __init__(self, hidden_size: int, labels: Sequence[str], layer: int):
        super().__init__()
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise WavadaptError(f"language identification needs two or more distinct languages, got {list(labels)}")
        self.labels, self.layer = list(labels), layer
        self.norm = nn.LayerNorm(2 * hidden_size)
        self.classifier = nn.Linear(2 * hidden_size, len(labels))

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        count = lengths.clamp(min=1).to(hidden.dtype)[:, None]
        mean = (hidden * valid).sum(1) / count
        std = ((((hidden - mean[:, None]) * valid) ** 2).sum(1) / count).clamp(min=1e-8).sqrt()
        return self.classifier(self.norm(torch.cat([mean, std], -1)))


def check_layer(backbone: nn.Module, layer: int) -> None:
    layers = len(encoder_of(backbone).layers)
    if not 0 <= layer <= layers:
        raise WavadaptError(f"language identification reads layer 0..{layers} of this {layers}-layer encoder, "
                            f"not {layer}")


class _Enough(Exception):
    """Raised by the hook that has what it needed, to skip the layers above."""


def at_layer(backbone: nn.Module, layer: int, take: Callable[[torch.Tensor], None], stop: bool = False):
    """A hook handle that calls ``take(hidden)`` with the hidden states entering encoder layer ``layer`` (the
    encoder's output for the top) during the backbone's next forwards; with ``stop``, the forward ends there
    (:func:`run_to_layer` catches it)."""
    encoder = encoder_of(backbone)

    def seen(hidden: torch.Tensor) -> None:
        take(hidden)
        if stop:
            raise _Enough

    if layer < len(encoder.layers):
        return encoder.layers[layer].register_forward_pre_hook(lambda module, args: seen(args[0]))
    return encoder.register_forward_hook(lambda module, args, output: seen(output[0]))


def run_to_layer(run: Callable[[], object], backbone: nn.Module, layer: int) -> torch.Tensor:
    """The hidden states entering ``layer`` during ``run()`` (a forward of ``backbone``), skipping the layers above."""
    seen: list[torch.Tensor] = []
    handle = at_layer(backbone, layer, seen.append, stop=True)
    try:
        run()
    except _Enough:
        pass
    finally:
        handle.remove()
    return seen[0]
