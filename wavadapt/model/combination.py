"""Rows that run several tasks at once: their adapter stacks combined, their heads' posteriors mixed.

A language without an adapter of its own can borrow its neighbours': at every adapter and task layer norm the row
runs each component stack and mixes their outputs with its weights (AdapterHub's output averaging; with weights
from language identification, or tuned per utterance by entropy minimisation: EMEA, Wang et al. 2021), all rows and
components in one gathered pass (:func:`wavadapt.model.adapters.combining`). The components' CTC heads keep their
own vocabularies, so a row's output is the mixture of their frame posteriors over the merged vocabulary,
``p(c) = sum_k w_k p_k(c)`` (a letter outside a component's vocabulary has probability 0 there): a mixture of
experts per frame, which needs no head trained on the merged vocabulary and reduces to the single head when one
weight is 1.

Weights are (B, K), or per place (places, B, K): one row per encoder layer, the encoder's own layer norm, then the
heads (:func:`places`); each row's weights are normalised to sum to one.
"""

from collections.abc import Sequence

import torch

from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import combining, encoder_of
from wavadapt.model.ctc import CTCModel, CTCOutput

FLOOR = -1e9
"""log 0 inside the mixture: a finite stand-in, so that gradients through it (EMEA's) stay finite."""


def places(model: CTCModel) -> int:
    """Places with weights of their own: each encoder layer, the encoder's layer norm, the heads."""
    return len(encoder_of(model.backbone).layers) + 2


def merged_vocabulary(vocabularies: Sequence[Vocabulary]) -> tuple[Vocabulary, list[torch.Tensor]]:
    """One vocabulary with every letter of ``vocabularies`` (the first one's tokens, then the others' new letters
    in order), and each vocabulary's ids in it; blanks and unknowns map to the first one's."""
    first = vocabularies[0]
    tokens = list(first.tokens)
    maps = []
    for vocabulary in vocabularies:
        ids = []
        for token in vocabulary.tokens:
            token = {vocabulary.blank: first.blank, vocabulary.unk: first.unk}.get(token, token)
            if token not in tokens:
                tokens.append(token)
            ids.append(tokens.index(token))
        maps.append(torch.tensor(ids))
    return Vocabulary(tokens, blank=first.blank, unk=first.unk), maps


def normalised(weights: torch.Tensor) -> torch.Tensor:
    if bool((weights < 0).any()) or bool((weights.sum(-1) <= 0).any()):
        raise WavadaptError("combination weights are non-negative, and each row's sum to more than 0")
    return weights / weights.sum(-1, keepdim=True)


def padded(components: Sequence[Sequence[str]], weights: torch.Tensor
           ) -> tuple[list[list[str | None]], torch.Tensor]:
    """Every row's components padded with None to the longest row's count, and the weights with 0 there, each
    row's normalised."""
    count = max(map(len, components))
    if weights.shape[-2:] != (len(components), count) or weights.dim() not in (2, 3):
        raise WavadaptError(f"weights of shape {tuple(weights.shape)} for {len(components)} rows of up to {count} "
                            "components")
    rows = [list(row) + [None] * (count - len(row)) for row in components]
    absent = torch.tensor([[t is None for t in row] for row in rows], device=weights.device)
    return rows, normalised(weights.masked_fill(absent, 0.0))


def stacks_of(model: CTCModel, rows: Sequence[Sequence[str | None]]) -> list[list[tuple[str, ...] | None]]:
    return [[model.stacks[t] if t else None for t in row] for row in rows]


def forward_combined(model: CTCModel, waveforms: torch.Tensor, components: Sequence[Sequence[str]],
                     weights: torch.Tensor, attention_mask: torch.Tensor | None = None
                     ) -> tuple[CTCOutput, Vocabulary]:
    """Row b runs the tasks ``components[b]`` combined with ``weights`` (see the module); returns log-probabilities
    over the merged vocabulary of every task in the batch, and that vocabulary."""
    unknown = sorted({t for row in components for t in row} - set(model.heads))
    if unknown:
        raise WavadaptError(f"unknown task(s) {unknown}; the model has {sorted(model.heads)}")
    rows, weights = padded(components, weights)
    with combining(model.backbone, stacks_of(model, rows), weights):
        hidden, lengths = model._encode(waveforms, attention_mask)
    return mixed_heads(model, hidden, lengths, rows, weights)


def mixed_heads(model: CTCModel, hidden: torch.Tensor, lengths: torch.Tensor, rows: Sequence[Sequence[str | None]],
                weights: torch.Tensor) -> tuple[CTCOutput, Vocabulary]:
    """Each row's heads' frame posteriors mixed by its head weights, as log-probabilities over the merged
    vocabulary of every task in ``rows``."""
    tasks = list(dict.fromkeys(t for row in rows for t in row if t))
    vocabulary, maps = merged_vocabulary([model.vocabularies[t] for t in tasks])
    shape = (*hidden.shape[:2], len(vocabulary))
    merged, support = {}, {}
    for task, ids in zip(tasks, maps, strict=True):  # each head over every row, in the merged vocabulary
        scores = model.heads[task](hidden).float().log_softmax(-1).to(hidden.dtype)
        merged[task] = hidden.new_full(shape, FLOOR).index_copy(-1, ids.to(hidden.device), scores)
        support[task] = torch.zeros(len(vocabulary), dtype=torch.bool, device=hidden.device).index_fill(
            0, ids.to(hidden.device), True)
    absent = hidden.new_full(shape, FLOOR)
    head_weights = weights[-1] if weights.dim() == 3 else weights
    terms = torch.stack([torch.stack([merged[t][b] if t else absent[b] for t in row]) for b, row in enumerate(rows)])
    log_weights = torch.where(head_weights > 0, head_weights.clamp(min=1e-30).log(), FLOOR).to(hidden.dtype)
    mixed = torch.logsumexp(terms + log_weights[:, :, None, None], dim=1)
    # A letter no weighted component has is impossible: -inf (masked after the sum, so gradients stay finite).
    possible = torch.stack([torch.stack([support[t] & (w > 0) if t else torch.zeros_like(support[tasks[0]])
                                         for t, w in zip(row, head_weights[b], strict=True)]).any(0)
                            for b, row in enumerate(rows)])
    return CTCOutput(mixed.masked_fill(~possible[:, None, :], float("-inf")), lengths), vocabulary
