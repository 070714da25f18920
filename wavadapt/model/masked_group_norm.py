"""Exact batching for group-norm CNNs (wav2vec 2.0 / HuBERT / WavLM Base): a first-layer GroupNorm that ignores padding.

transformers' first conv layer normalises each channel over the whole time axis, zero padding included, so a padded
row's features depend on its batch. :class:`MaskedGroupNorm`, told each row's valid sample count, takes the row's
statistics over its own frames only. That is enough for the whole CNN: its convs have no padding, so a valid frame of
any layer only sees valid frames of the layer below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

from wavadapt.errors import WavadaptError


class MaskedGroupNorm(nn.GroupNorm):
    """transformers' per-channel GroupNorm (its Parameter objects, so its names) that, inside :meth:`valid_samples`,
    normalises row i over the frames of its first ``samples[i]`` input samples; outside, it is the GroupNorm."""

    kernel: int
    stride: int
    samples: torch.Tensor | None

    @classmethod
    def wrap(cls, base: nn.GroupNorm, conv: nn.Conv1d) -> MaskedGroupNorm:
        """Share ``base``'s parameters; ``conv`` is the layer that feeds it, which maps samples to frames."""
        if not isinstance(base, nn.GroupNorm) or base.num_groups != base.num_channels or not base.affine:
            raise WavadaptError(f"expected the feature encoder's per-channel affine GroupNorm, not {base}")
        norm = cls(base.num_groups, base.num_channels, eps=base.eps, device=base.weight.device, dtype=base.weight.dtype)
        norm.weight, norm.bias = base.weight, base.bias  # the same Parameter objects: names unchanged
        norm.kernel, norm.stride = conv.kernel_size[0], conv.stride[0]
        norm.samples = None
        return norm

    @contextlib.contextmanager
    def valid_samples(self, samples: torch.Tensor) -> Iterator[None]:
        """(B,) valid input samples per row (right padding) for the forward passes inside the block."""
        self.samples = samples
        try:
            yield
        finally:
            self.samples = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.samples is None:
            return super().forward(x)
        frames = torch.div(self.samples.to(x.device) - self.kernel, self.stride, rounding_mode="floor") + 1
        valid = (torch.arange(x.shape[-1], device=x.device) < frames[:, None])[:, None]  # (B, 1, T)
        count = frames.clamp(min=1)[:, None, None]  # an empty row stays finite; its frames are never read
        h = x.float()  # fp32 statistics, as GroupNorm's under autocast and fairseq's Fp32GroupNorm
        centered = h - h.masked_fill(~valid, 0).sum(-1, keepdim=True) / count
        var = centered.masked_fill(~valid, 0).square().sum(-1, keepdim=True) / count
        scale = torch.rsqrt(var + self.eps) * self.weight.float()[:, None]
        return torch.addcmul(self.bias.float()[:, None], centered, scale).to(x.dtype)


def masked_group_norm(backbone: PreTrainedModel) -> MaskedGroupNorm:
    """The group-norm backbone's first-layer :class:`MaskedGroupNorm`, swapped in on the first call."""
    first = backbone.feature_extractor.conv_layers[0]
    if not isinstance(first.layer_norm, MaskedGroupNorm):
        first.layer_norm = MaskedGroupNorm.wrap(first.layer_norm, first.conv)
    return first.layer_norm
