"""The contrastive task of wav2vec 2.0 (paper eq. 3; fairseq ``Wav2Vec2Model.sample_negatives`` /
``compute_preds`` and the ``wav2vec`` criterion with ``infonce``).

The N masked steps of a batch are flattened in (utterance, time) order. Each step's context vector c_t
must pick its own quantized target q_t among K distractors: targets of OTHER masked steps of the same
utterance, drawn uniformly with replacement (fairseq samples them from the utterance's masked targets
``y``; no cross-utterance negatives).
"""

from __future__ import annotations

import torch
from torch import nn


def sample_negatives(mask: torch.Tensor, num_negatives: int = 100,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) bool mask -> (N, K) rows of the N flattened masked steps (``x[mask]``), K per step.

    Step i of an utterance with M masked steps draws uniformly from its M - 1 other masked steps:
    ``randint(M - 1)``, shifted up by one at and above i (fairseq's trick keeps the draw uniform).
    Padding is never drawn, since it is never masked. Raises ValueError for an utterance with exactly
    one masked step (it has nothing to contrast with).
    """
    counts = mask.sum(1)  # (B,) masked steps per utterance
    if bool((counts == 1).any()):
        raise ValueError("an utterance has a single masked step: no other step to draw distractors from")
    first = counts.cumsum(0) - counts  # (B,) row of each utterance's first masked step
    utterance = torch.repeat_interleave(torch.arange(len(counts), device=mask.device), counts)  # (N,)
    rank = torch.arange(len(utterance), device=mask.device) - first[utterance]  # (N,) step within utterance
    others = (counts[utterance] - 1).double()  # (N,)
    device = generator.device if generator is not None else mask.device
    u = torch.rand((len(utterance), num_negatives), generator=generator, dtype=torch.float64, device=device)
    draw = (u.to(mask.device) * others[:, None]).long()  # (N, K) uniform in [0, M - 1)
    draw += draw >= rank[:, None]  # skip the step itself
    return draw + first[utterance][:, None]


def contrastive_logits(context: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                       temperature: float = 0.1) -> torch.Tensor:
    """Cosine similarities / temperature of each step's context with its target and its distractors.

    ``context`` (N, F) projected transformer outputs and ``targets`` (N, F) projected quantized targets of
    the masked steps; ``negatives`` (N, K) rows of ``targets``. Returns (N, 1 + K) fp32 logits, the true
    target at index 0; a distractor identical to the true target (a collapsed codebook) gets -inf, as
    fairseq's ``neg_is_pos``, so it is neither rewarded nor penalised.
    """
    distractors = targets[negatives]  # (N, K, F)
    candidates = torch.cat([targets[:, None], distractors], 1)  # (N, 1 + K, F)
    logits = torch.cosine_similarity(context.float()[:, None], candidates.float(), dim=-1) / temperature
    same = (distractors == targets[:, None]).all(-1)  # (N, K)
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], 1)


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of picking index 0, summed over the steps (fp32): eq. 3 of the paper."""
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return nn.functional.cross_entropy(logits.float(), target, reduction="sum")


def correct_predictions(logits: torch.Tensor) -> torch.Tensor:
    """Steps whose true target scores highest, not counting steps whose logits are all equal (fairseq's
    ``correct``: argmax == 0 and not argmin == 0)."""
    best, worst = logits.argmax(-1) == 0, logits.argmin(-1) == 0
    return (best & ~worst).sum()
