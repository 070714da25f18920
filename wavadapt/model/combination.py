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


def forward_combined(model: CTCModel, waveforms: torch.Tensor, components: Sequence[Sequence[str]],
                     weights: torch.Tensor, attention_mask: torch.Tensor | None = None
                     ) -> tuple[CTCOutput, Vocabulary]:
    """Row b runs the tasks ``components[b]`` combined with ``weights`` (see the module); returns log-probabilities
    over the merged vocabulary of every task in the batch, and that vocabulary."""
    unknown = sorted({t for row in components for t in row} - set(model.heads))
    if unknown:
        raise WavadaptError(f"unknown task(s) {unknown}; the model has {sorted(model.heads)}")
    count = max(map(len, components))
    if weights.shape[-2:] != (len(components), count) or weights.dim() not in (2, 3):
        raise WavadaptError(f"weights of shape {tuple(weights.shape)} for {len(components)} rows of up to {count} "
                            "components")
    rows = [list(row) + [None] * (count - len(row)) for row in components]
    padding = torch.tensor([[t is None for t in row] for row in rows], device=weights.device)
    weights = normalised(weights.masked_fill(padding, 0.0))
    with combining(model.backbone, [[model.stacks[t] if t else None for t in row] for row in rows], weights):
        hidden, lengths = model._encode(waveforms, attention_mask)
    tasks = list(dict.fromkeys(t for row in rows for t in row if t))
    vocabulary, maps = merged_vocabulary([model.vocabularies[t] for t in tasks])
    merged = {}
    for task, ids in zip(tasks, maps, strict=True):  # each head over every row, in the merged vocabulary
        scores = hidden.new_full((*hidden.shape[:2], len(vocabulary)), float("-inf"))
        merged[task] = scores.index_copy(-1, ids.to(hidden.device), model.heads[task](hidden).float()
                                         .log_softmax(-1).to(hidden.dtype))
    absent = hidden.new_full((*hidden.shape[:2], len(vocabulary)), float("-inf"))
    head_weights = weights[-1] if weights.dim() == 3 else weights
    terms = torch.stack([torch.stack([merged[t][b] if t else absent[b] for t in row]) for b, row in enumerate(rows)])
    log_weights = head_weights.to(hidden.dtype).log()[:, :, None, None]
    return CTCOutput(torch.logsumexp(terms + log_weights, dim=1), lengths), vocabulary
