"""The contrastive task: distractor sampling, logits, the loss, and parity with transformers."""

import math

import numpy as np
import pytest
import torch
from model_probes import NO_DROPOUT
from torch import nn

from wavadapt.model.backbone import build_pretraining_model
from wavadapt.model.pretraining import PretrainingModel
from wavadapt.objectives.contrastive import (
    contrastive_logits,
    contrastive_loss,
    correct_predictions,
    sample_negatives,
)
from wavadapt.objectives.masking import compute_mask_indices


def test_distractors_are_other_masked_steps_of_the_same_utterance():
    mask = torch.from_numpy(compute_mask_indices((3, 200), [200, 150, 60], require_same_masks=False,
                                                 rng=np.random.default_rng(0)))
    negatives = sample_negatives(mask, 100, torch.Generator().manual_seed(0))
    n = int(mask.sum())
    assert negatives.shape == (n, 100)
    utterance = mask.nonzero()[:, 0]  # (N,) the utterance of each flattened masked step
    rows = torch.arange(n)[:, None]
    assert (negatives != rows).all()  # never the step itself
    assert (negatives >= 0).all() and (negatives < n).all()  # masked steps only, so never padding
    assert (utterance[negatives] == utterance[:, None]).all()  # same utterance
    # Uniform over the M - 1 others: every other step of a 60-frame utterance gets drawn.
    last = (utterance == 2).nonzero()[:, 0]
    assert set(negatives[last].unique().tolist()) == set(last.tolist())
    again = sample_negatives(mask, 100, torch.Generator().manual_seed(0))
    assert torch.equal(negatives, again)


def test_an_utterance_with_one_masked_step_cannot_be_contrasted():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3:6] = True
    mask[1, 4] = True
    with pytest.raises(ValueError, match="single masked step"):
        sample_negatives(mask, 5)


def test_logits_and_loss_equal_a_hand_computed_reference():
    context = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])  # steps 0 and 2 share a codevector
    negatives = torch.tensor([[1, 2], [0, 2], [0, 1]])
    logits = contrastive_logits(context, targets, negatives, temperature=0.5)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([
        [s / 0.5, 0.0, -math.inf],  # step 0: its distractor 2 equals its target -> -inf (neg_is_pos)
        [1 / 0.5, s / 0.5, s / 0.5],
        [1 / 0.5, -math.inf, s / 0.5],  # step 2: distractor 0 equals its target
    ])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert logits.dtype == torch.float32
    reference = sum(-row[0] + torch.logsumexp(row, 0) for row in expected)
    assert contrastive_loss(logits).item() == pytest.approx(reference.item(), rel=1e-6)
    assert correct_predictions(logits).item() == 3


def _gumbel_without_noise(logits, tau=1.0, hard=False, dim=-1):
    # Straight-through argmax: transformers and our quantizer then draw the same codes in training mode.
    soft = (logits / tau).softmax(dim)
    return torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0) - soft.detach() + soft


def test_contrastive_and_diversity_losses_equal_transformers_on_the_same_weights(monkeypatch):
    monkeypatch.setattr(nn.functional, "gumbel_softmax", _gumbel_without_noise)
    torch.manual_seed(0)
    reference = build_pretraining_model("tiny", **NO_DROPOUT).train()
    copy = build_pretraining_model("tiny", **NO_DROPOUT)
    copy.load_state_dict(reference.state_dict())
    model = PretrainingModel.from_pretraining(copy, "en")
    model.activate("en")

    waveforms = torch.randn(2, 32000)
    attention_mask = torch.ones(2, 32000, dtype=torch.long)
    attention_mask[1, 20000:] = 0
    waveforms[1, 20000:] = 0
    frames = reference._get_feat_extract_output_lengths(attention_mask.sum(1))
    mask = torch.from_numpy(compute_mask_indices((2, int(frames.max())), frames.numpy(),
                                                 require_same_masks=False, rng=np.random.default_rng(0)))
    negatives = sample_negatives(mask, 100, torch.Generator().manual_seed(0))
    # transformers indexes distractors in the flattened (B * T) sequence, one row per time step.
    hf_negatives = torch.zeros(*mask.shape, 100, dtype=torch.long)
    hf_negatives[mask] = mask.flatten().nonzero()[:, 0][negatives]

    ours = model(waveforms, attention_mask, mask_indices=mask, negatives=negatives)
    theirs = reference(waveforms, attention_mask=attention_mask, mask_time_indices=mask,
                       sampled_negative_indices=hf_negatives)
    assert ours.contrastive.item() == pytest.approx(theirs.contrastive_loss.item(), rel=1e-5)
    # fairseq's perplexity adds 1e-7 inside the log (transformers uses xlogy): ~1e-5 relative.
    assert ours.diversity.item() == pytest.approx(theirs.diversity_loss.item(), rel=1e-4)
    # transformers has no feature penalty: the rest of the loss is the same sum.
    assert (ours.loss - 10 * ours.feature_penalty).item() == pytest.approx(theirs.loss.item(), rel=1e-5)
