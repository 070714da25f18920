"""Rows whose language nobody named: identify it on the shared backbone and route each row, in the same batch.

A row asks for a task (``en``), a combination (``en+de``) or ``auto``. An ``auto`` row goes to the task of the
language identified (`LanguageId`) when its probability reaches ``threshold`` and that language has a task; any
other ``auto`` row, and every combination, runs its candidate tasks combined (:mod:`wavadapt.model.combination`)
with weights that are ``uniform``, the identifier's posterior over the candidates (``lid``), or tuned for the
utterance by entropy minimisation (``entropy``: EMEA, Wang et al. 2021: start uniform, descend the entropy of the
output's frame posteriors with respect to per-place weight logits, decode with the result).

The identifier reads the frames entering its layer. When no candidate stack has adapters below that layer, those
layers are the same computation for identification and transcription, and the batch runs once: a hook at the
identifier's layer identifies every row and sets the routing for the layers above. Otherwise identification runs
first, up to its layer only.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import adapted_layers, adapter_config, combining, encoder_of, set_combination
from wavadapt.model.combination import forward_combined, mixed_heads, padded, places, stacks_of
from wavadapt.model.ctc import CTCModel, CTCOutput
from wavadapt.model.language_id import at_layer

AUTO = "auto"
COMBINE = ("uniform", "lid", "entropy")


@dataclass(frozen=True)
class AutoConfig:
    """How ``auto`` rows and combinations are routed."""

    combine: str = "lid"
    """Weights of a combination: uniform, lid (the identifier's posterior) or entropy (EMEA)."""
    threshold: float = 0.5
    """An ``auto`` row whose top language is less probable than this runs the combination."""
    entropy_steps: int = 1
    entropy_lr: float = 10.0
    """EMEA's gradient steps on the weight logits and their size."""

    def __post_init__(self) -> None:
        if self.combine not in COMBINE:
            raise WavadaptError(f"--combine {self.combine!r}: choose from {', '.join(COMBINE)}")


AUTO_DEFAULTS = AutoConfig()


@dataclass
class Route:
    """Where one row went: the task (or ``a+b`` combination) and its weights, and the language identified."""

    task: str
    components: tuple[str, ...]
    weights: tuple[float, ...]
    language: str | None = None
    probability: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    """The identifier's posterior per language (when it ran)."""


def components_of(request: str) -> tuple[str, ...]:
    """``a+b`` as its tasks; a single task as itself."""
    return tuple(request.split("+"))


def task_of_language(model: CTCModel, language: str) -> str | None:
    """The task that transcribes ``language``: the one named like it, else the first ``language/...`` one."""
    if language in model.heads:
        return language
    return next((t for t in model.heads if t.split("/")[0] == language), None)


def check_requests(model: CTCModel, requests: set[str]) -> None:
    """Refuse, naming it, a request for an unknown task, or ``auto`` without an identifier or tasks to route to."""
    if AUTO in requests:
        if model.language_id is None:
            raise WavadaptError("task auto needs a language identifier: load its file (adapter.lid.json, from "
                                "`wavadapt finetune --objective lid`)")
        if not _candidates(model):
            raise WavadaptError(f"task auto: none of the identifier's languages ({', '.join(model.language_id.labels)})"
                                f" has a task; the model has {', '.join(sorted(model.heads))}")
    unknown = sorted({t for r in requests - {AUTO} for t in components_of(r)} - set(model.heads))
    if unknown:
        raise WavadaptError(f"unknown task(s) {', '.join(unknown)}; the model has {', '.join(sorted(model.heads))}")


def _candidates(model: CTCModel) -> dict[str, str]:
    """The identifier's languages that have a task, and their tasks."""
    found = {lang: task_of_language(model, lang) for lang in model.language_id.labels}
    return {lang: task for lang, task in found.items() if task}


def _lowest_adapted(model: CTCModel, tasks: Sequence[str]) -> int:
    layers = len(encoder_of(model.backbone).layers)
    sets = {n for t in tasks for n in model.stacks[t]}
    return min((adapted_layers(layers, adapter_config(model.backbone, n).top_n)[0] for n in sets), default=layers)


def route(model: CTCModel, waveforms: torch.Tensor, requests: Sequence[str], config: AutoConfig = AutoConfig(),
          attention_mask: torch.Tensor | None = None) -> tuple[CTCOutput, Vocabulary, list[Route]]:
    """Run a batch whose row i asks for ``requests[i]`` (a task, ``a+b``, or ``auto``): log-probabilities over
    the merged vocabulary of every task routed to, that vocabulary, and each row's route."""
    check_requests(model, set(requests))
    needs_lid = AUTO in requests or (config.combine == "lid" and any("+" in r for r in requests))
    tasks = {t for r in requests if r != AUTO for t in components_of(r)}
    if AUTO in requests:
        tasks |= set(_candidates(model).values())
    if needs_lid and config.combine != "entropy" and _lowest_adapted(model, tasks) >= model.language_id.layer > 0:
        return _route_shared(model, waveforms, requests, config, attention_mask)
    probabilities = None
    if needs_lid:
        with torch.no_grad():
            probabilities = model.identify(waveforms, attention_mask).float().softmax(-1)
    routes = _routes(model, requests, probabilities, config)
    weights = _weights(routes, waveforms.device)
    if config.combine == "entropy" and any(len(r.components) > 1 for r in routes):
        weights = _minimise_entropy(model, waveforms, attention_mask, routes, weights, config)
        head = weights[-1]
        for r, w in zip(routes, head.tolist(), strict=True):
            r.weights = tuple(round(x, 4) for x in w[: len(r.components)])
    output, vocabulary = forward_combined(model, waveforms, [r.components for r in routes], weights, attention_mask)
    return output, vocabulary, routes


def _route_shared(model: CTCModel, waveforms: torch.Tensor, requests: Sequence[str], config: AutoConfig,
                  attention_mask: torch.Tensor | None) -> tuple[CTCOutput, Vocabulary, list[Route]]:
    """One forward: a hook where the identifier reads identifies every row and routes the layers above."""
    lengths = model.output_lengths(attention_mask, *waveforms.shape, device=waveforms.device)
    routes: list[Route] = []

    def identified(hidden: torch.Tensor) -> None:
        with torch.no_grad():
            probabilities = model.language_id(hidden, lengths).float().softmax(-1)
        routes.extend(_routes(model, requests, probabilities, config))
        rows, weights = padded([r.components for r in routes], _weights(routes, hidden.device))
        set_combination(model.backbone, stacks_of(model, rows), weights)

    handle = at_layer(model.backbone, model.language_id.layer, identified)
    try:  # the bare backbone below the identifier's layer; the routes above it
        with combining(model.backbone, [[None]] * len(requests), torch.ones(len(requests), 1)):
            hidden, lengths = model._encode(waveforms, attention_mask)
    finally:
        handle.remove()
    rows, weights = padded([r.components for r in routes], _weights(routes, hidden.device))
    output, vocabulary = mixed_heads(model, hidden, lengths, rows, weights)
    return output, vocabulary, routes


def _routes(model: CTCModel, requests: Sequence[str], probabilities: torch.Tensor | None,
            config: AutoConfig) -> list[Route]:
    labels = model.language_id.labels if model.language_id is not None else []
    candidates = _candidates(model) if AUTO in requests else {}
    routes = []
    for i, request in enumerate(requests):
        scores = dict(zip(labels, probabilities[i].tolist(), strict=True)) if probabilities is not None else {}
        language = max(scores, key=scores.get) if scores else None
        found = {"language": language, "probability": scores.get(language), "scores": scores}
        if request == AUTO and language in candidates and scores[language] >= config.threshold:
            routes.append(Route(candidates[language], (candidates[language],), (1.0,), **found))
            continue
        tasks = tuple(candidates.values()) if request == AUTO else components_of(request)
        if len(tasks) == 1:
            routes.append(Route(tasks[0], tasks, (1.0,), **found))
            continue
        if config.combine == "lid":  # the posterior over the components' languages, renormalised
            by_task = {task: scores.get(task.split("/")[0], 0.0) for task in tasks}
            total = sum(by_task.values())
            weights = tuple(by_task[t] / total if total > 0 else 1 / len(tasks) for t in tasks)
        else:
            weights = (1 / len(tasks),) * len(tasks)
        routes.append(Route("+".join(tasks), tasks, weights, **found))
    return routes


def _weights(routes: list[Route], device: torch.device) -> torch.Tensor:
    count = max(len(r.weights) for r in routes)
    return torch.tensor([[*r.weights, *[0.0] * (count - len(r.weights))] for r in routes], device=device)


def _minimise_entropy(model: CTCModel, waveforms: torch.Tensor, attention_mask: torch.Tensor | None,
                      routes: list[Route], weights: torch.Tensor, config: AutoConfig) -> torch.Tensor:
    """EMEA: per-place weight logits, uniform at first over each row's components, moved by gradient descent on the
    mean entropy of each row's frame posteriors; returns the per-place weights (places, B, K)."""
    # Gradients under an inference-mode caller too: normal tensors, outside inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        present = weights.clone() > 0
        waveforms = waveforms.clone()
        attention_mask = attention_mask.clone() if attention_mask is not None else None
        logits = torch.zeros(places(model), *weights.shape, device=weights.device, requires_grad=True)
        for _ in range(config.entropy_steps):
            current = logits.masked_fill(~present, float("-inf")).softmax(-1)
            output, _ = forward_combined(model, waveforms, [r.components for r in routes], current, attention_mask)
            valid = (torch.arange(output.logits.shape[1], device=waveforms.device)[None]
                     < output.lengths.to(waveforms.device)[:, None])
            entropy = -(output.logits.exp() * output.logits.nan_to_num(neginf=0.0)).sum(-1)
            loss = ((entropy * valid).sum(1) / valid.sum(1).clamp(min=1)).sum()  # rows apart: each as if alone
            (grad,) = torch.autograd.grad(loss, logits)
            with torch.no_grad():
                logits -= config.entropy_lr * grad
    return logits.detach().masked_fill(~present, float("-inf")).softmax(-1)
