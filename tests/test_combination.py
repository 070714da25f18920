"""Combined adapter stacks: a combination weighted (1, 0, ...) is the single task, weights are normalised, each
row of a batch of different combinations gets what it gets alone, and per-place weights reach every place."""

import pytest
import torch
from test_transcription import _two_task_model

from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.model.combination import forward_combined, merged_vocabulary, places

TOLERANCE = {"atol": 1e-5, "rtol": 0}  # the gathered routing's batched matmuls against each set's own modules


@pytest.fixture(scope="module")
def model():
    return _two_task_model("layer")


@pytest.fixture(scope="module")
def audio():
    torch.manual_seed(1)
    return torch.randn(3, 16000) * 0.1


def single(model, task: str, audio: torch.Tensor, vocabulary: Vocabulary) -> torch.Tensor:
    """The task alone, its log-probabilities placed in ``vocabulary`` (-inf where it has no such letter)."""
    model.activate(task)
    with torch.no_grad():
        logp = model(audio).logits.log_softmax(-1)
    ids = [vocabulary.tokens.index({model.vocabularies[task].blank: vocabulary.blank}.get(t, t))
           for t in model.vocabularies[task].tokens]
    placed = logp.new_full((*logp.shape[:2], len(vocabulary)), float("-inf"))
    placed[..., ids] = logp
    return placed


def test_the_merged_vocabulary_holds_every_letter_once():
    en, es = Vocabulary.build(["the quick fox"]), Vocabulary.build(["el zorro marrón"])
    merged, (to_en, to_es) = merged_vocabulary([en, es])
    assert merged.tokens[: len(en)] == en.tokens and len(set(merged.tokens)) == len(merged.tokens)
    assert [merged.tokens[i] for i in to_es] == es.tokens and set(merged.tokens) == set(en.tokens) | set(es.tokens)
    assert to_en.tolist() == list(range(len(en)))


@pytest.mark.parametrize("task", ["en", "es"])
def test_weight_one_on_a_task_is_that_task(model, audio, task):
    rows = [["en", "es"]] * 3
    weights = torch.tensor([[1.0, 0.0] if task == "en" else [0.0, 1.0]] * 3)
    with torch.no_grad():
        output, vocabulary = forward_combined(model, audio, rows, weights)
    torch.testing.assert_close(output.logits, single(model, task, audio, vocabulary), **TOLERANCE)


def test_weights_are_normalised_and_bad_ones_refused(model, audio):
    rows = [["en", "es"]] * 3
    with torch.no_grad():
        half, _ = forward_combined(model, audio, rows, torch.full((3, 2), 0.5))
        scaled, _ = forward_combined(model, audio, rows, torch.full((3, 2), 7.0))
        per_place, _ = forward_combined(model, audio, rows, torch.full((places(model), 3, 2), 3.0))
    torch.testing.assert_close(scaled.logits, half.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(per_place.logits, half.logits, atol=1e-6, rtol=0)
    assert torch.logsumexp(half.logits, -1).abs().max() < 1e-5  # a distribution per frame
    for bad in (torch.tensor([[1.0, -1.0]] * 3), torch.zeros(3, 2)):
        with pytest.raises(WavadaptError, match="non-negative"):
            forward_combined(model, audio, rows, bad)


def test_each_row_of_a_mixed_batch_gets_its_combination_alone(model, audio):
    rows = [["en", "es"], ["es"], ["es", "en"]]
    weights = torch.tensor([[0.3, 0.7], [1.0, 0.0], [0.9, 0.1]])
    with torch.no_grad():
        together, vocabulary = forward_combined(model, audio, rows, weights)
        for b in range(3):
            alone, alone_vocabulary = forward_combined(model, audio[b : b + 1], [rows[b]], weights[b : b + 1, :
                                                                                                   len(rows[b])])
            columns = [vocabulary.tokens.index(t) for t in alone_vocabulary.tokens]
            torch.testing.assert_close(together.logits[b][:, columns], alone.logits[0], **TOLERANCE)


def test_per_place_weights_reach_every_place(model, audio):
    """Weight 1 on en everywhere but one place: each place changes the output (its adapters, norms or head)."""
    rows = [["en", "es"]] * 3
    base = torch.tensor([1.0, 0.0]).expand(places(model), 3, 2).clone()
    with torch.no_grad():
        reference, _ = forward_combined(model, audio, rows, base)
        for place in range(places(model)):
            moved = base.clone()
            moved[place] = torch.tensor([0.5, 0.5])
            changed, _ = forward_combined(model, audio, rows, moved)
            assert (changed.logits - reference.logits).nan_to_num(0.0, 0.0, 0.0).abs().max() > 1e-4, place
