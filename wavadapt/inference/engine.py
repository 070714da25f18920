"""CTC decoding of a corpus (greedy, or beam search with an LM beside greedy) or single files, and WER / CER
(jiwer) per language."""

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jiwer
import numpy as np
import torch
from torch import nn

from wavadapt.data.audio import SAMPLE_RATE, normalize_waveform, read_audio
from wavadapt.data.batching import AudioDataset, filter_by_length, make_dataloader, transcribed
from wavadapt.data.corpora import Utterance, require_unique_ids
from wavadapt.data.text import normalize_text
from wavadapt.decoding import DecoderConfig, decode_in_processes, log_probs, texts
from wavadapt.errors import AudioError, WavadaptError
from wavadapt.model.checkpoint import safe_name
from wavadapt.model.ctc import CTCModel, CTCOutput

log = logging.getLogger("wavadapt.inference.engine")

CHUNK_SECONDS = 30.0
"""Longest audio :func:`transcribe` decodes in one forward pass."""


@dataclass
class Scores:
    """Corpus-level error rates: edits over all reference words (characters), not a mean of per-file rates."""

    wer: float
    cer: float
    utterances: int
    seconds: float
    """Audio duration."""
    greedy_wer: float | None = None
    greedy_cer: float | None = None
    """Greedy decoding's rates on the same logits, when ``wer`` and ``cer`` are a beam search's."""


@dataclass
class EvalResult(Scores):
    """Scores of one task on a set of utterances, overall and per language."""

    task: str = ""
    decoder: str = "greedy"
    """How the hypotheses were decoded (``DecoderConfig.describe``)."""
    languages: dict[str, Scores] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """Ids of files that could not be read; they are not scored."""
    no_transcript: list[str] = field(default_factory=list)
    """Ids of utterances without a transcript (or none left after normalisation); not scored."""
    elapsed: float = 0.0
    """Wall-clock seconds of reading and decoding."""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A table of WER / CER per language (and overall when there are several)."""
        beam = self.greedy_wer is not None
        lines = [
            f"task {self.task}: {self.utterances} utterances, {self.seconds:.1f} s of audio decoded ({self.decoder}) "
            f"in {self.elapsed:.1f} s; {len(self.skipped)} unreadable and {len(self.no_transcript)} without a "
            "transcript skipped",
            f"{'language':<10}{'utterances':>11}{'WER':>9}{'CER':>9}"
            + (f"{'greedy WER':>12}{'CER':>9}" if beam else ""),
        ]
        rows = list(self.languages.items()) + ([("all", self)] if len(self.languages) > 1 else [])
        lines += [f"{lang:<10}{s.utterances:>11}{s.wer:>9.2%}{s.cer:>9.2%}"
                  + (f"{s.greedy_wer:>12.2%}{s.greedy_cer:>9.2%}" if beam else "") for lang, s in rows]
        return "\n".join(lines)


def forward_padded(model: CTCModel, waveforms: torch.Tensor, attention_mask: torch.Tensor,
                   tasks: list[str] | None = None) -> CTCOutput:
    """Run a zero-padded batch with the active task, or ``tasks[i]`` for row i (``CTCModel.forward_mixed``); audio
    shorter than one frame's receptive field (25 ms) decodes to nothing instead of failing in the CNN."""
    lengths = model.output_lengths(attention_mask, *waveforms.shape)
    one_frame = _receptive_field(model.backbone.config)
    if waveforms.shape[1] < one_frame:
        waveforms = nn.functional.pad(waveforms, (0, one_frame - waveforms.shape[1]))
    # transformers indexes every row's last frame: a row shorter than one frame gets one (never decoded).
    attention_mask = nn.functional.pad(attention_mask, (0, waveforms.shape[1] - attention_mask.shape[1]))
    attention_mask[:, :one_frame] = 1
    if tasks is not None:
        return CTCOutput(model.forward_mixed(waveforms, tasks, attention_mask=attention_mask).logits, lengths)
    return CTCOutput(model(waveforms, attention_mask=attention_mask).logits, lengths)


def _receptive_field(config) -> int:
    """Samples the CNN needs for one output frame (400 for the papers' encoder)."""
    samples, hop = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        samples += (kernel - 1) * hop
        hop *= stride
    return samples


@contextlib.contextmanager
def evaluating(model: CTCModel):
    """Eval mode without autograd, then every module's own mode back (training may freeze parts in eval)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, training in modes.items():
            m.training = training


def transcribe(model: CTCModel, waveform: np.ndarray, chunk_seconds: float | None = CHUNK_SECONDS) -> str:
    """Greedy transcript of one 16 kHz mono waveform by the active task.

    Audio longer than ``chunk_seconds`` is decoded in consecutive windows cut at their quietest 20 ms near the
    end (a pause, not a word, where there is one), so memory stays bounded for any length; None decodes it whole.
    """
    with evaluating(model):
        return " ".join(t for output in window_outputs(model, waveform, chunk_seconds)
                        if (t := model.greedy_decode(output)[0]))


def window_outputs(model: CTCModel, waveform: np.ndarray, chunk_seconds: float | None) -> Iterator[CTCOutput]:
    """The active task's output for each window of ``waveform`` (:func:`cut_at_pauses`), one forward each."""
    device = next(model.parameters()).device
    for piece in cut_at_pauses(waveform, chunk_seconds):
        if model.normalize_waveforms:
            piece = normalize_waveform(piece)
        x = torch.from_numpy(piece)[None].to(device)  # (1, S)
        yield forward_padded(model, x, torch.ones_like(x, dtype=torch.long))


def cut_at_pauses(x: np.ndarray, chunk_seconds: float | None, search_seconds: float = 5.0) -> list[np.ndarray]:
    """``x`` cut into windows of at most ``chunk_seconds``, each cut at the lowest-energy 20 ms frame of the
    window's last ``search_seconds``."""
    if chunk_seconds is None or len(x) <= chunk_seconds * SAMPLE_RATE:
        return [x]
    size, hop = int(chunk_seconds * SAMPLE_RATE), SAMPLE_RATE // 50
    search = min(int(search_seconds * SAMPLE_RATE), size // 2) // hop * hop
    pieces, start = [], 0
    while len(x) - start > size:
        end = start + size
        energy = np.square(x[end - search : end]).reshape(-1, hop).sum(axis=1)
        cut = end - search + hop * int(energy.argmin())
        pieces.append(x[start:cut])
        start = cut
    return [*pieces, x[start:]]


def score(references: list[str], hypotheses: list[str], seconds: float = 0.0, greedy: list[str] | None = None
          ) -> Scores:
    """Corpus WER and CER of normalised reference / hypothesis pairs (and of greedy hypotheses beside a beam's)."""
    result = Scores(jiwer.wer(references, hypotheses), jiwer.cer(references, hypotheses), len(references), seconds)
    if greedy is not None:
        result.greedy_wer, result.greedy_cer = jiwer.wer(references, greedy), jiwer.cer(references, greedy)
    return result


def evaluate(
    model: CTCModel,
    utterances: list[Utterance],
    task: str | None = None,
    max_seconds_per_batch: float = 60.0,
    language: str | None = None,
    out_dir: str | Path | None = None,
    decoder: DecoderConfig | None = None,
) -> EvalResult:
    """Decode ``utterances`` with ``task`` (default: the active one) and score them: greedily, or with the beam
    search of ``decoder``, whose scores then come with greedy decoding's of the same logits beside them.

    References are ``normalize_text(text, language or utterance.language)``; hypotheses are in the task's
    character set already. Results are grouped by ``Utterance.language``. Utterances without a transcript are
    skipped and listed (``no_transcript``), and so are unreadable files (``skipped``). Utterances are batched
    by length (longer ones than ``max_seconds_per_batch`` are batched apart), exactly for every CNN (a padded
    row decodes as it does alone: ``CTCModel`` masks the padding); those over ``CHUNK_SECONDS`` are decoded in
    windows as by :func:`transcribe` (a beam search reads the windows' log-probabilities joined). With ``out_dir``,
    writes ``hyp.<task>.txt`` and ``ref.<task>.txt`` (``<id> <text>`` lines, in input order), and
    ``hyp.<task>.greedy.txt`` beside a beam search's.
    """
    task = task or model.active
    if task is None:
        raise WavadaptError("no task to evaluate: the model has no active task")
    model.activate(task)
    require_unique_ids(utterances)
    # A test line with a foreign word is scored without it (the model cannot spell it): `check` names such lines.
    labeled, no_transcript, _, _ = transcribed(utterances, language, keep_foreign=True)
    if not labeled:
        raise WavadaptError(f"none of the {len(utterances)} utterances has a transcript to score against")

    start = time.perf_counter()
    readable = filter_by_length(labeled).kept  # fills lengths from headers, drops unreadable headers
    beam = decoder is not None and decoder.kind == "beam"
    vocab = model.vocabularies[task]
    with evaluating(model):
        hypotheses, emissions = _decode(model, readable, max_seconds_per_batch, beam) if readable else ({}, {})
    greedy = None
    if beam:
        ids = list(emissions)
        workers = min(os.cpu_count() or 1, max(1, len(ids) // 16))  # a process loads the LM in a second or so
        greedy, hypotheses = hypotheses, dict(zip(ids, texts(decode_in_processes(
            decoder, vocab, [emissions[i] for i in ids], workers)), strict=True))
    elapsed = time.perf_counter() - start
    scored = [u for u in labeled if u.id in hypotheses]
    if not scored:
        raise WavadaptError(f"none of the {len(labeled)} audio files could be read")

    lengths = {u.id: u.num_samples for u in readable}
    references = {u.id: normalize_text(u.text, language or u.language) for u in scored}
    by_language: dict[str, list[Utterance]] = {}
    for u in scored:
        by_language.setdefault(u.language, []).append(u)

    def scores(group: list[Utterance]) -> Scores:
        seconds = sum(lengths[u.id] for u in group) / SAMPLE_RATE
        return score([references[u.id] for u in group], [hypotheses[u.id] for u in group], seconds,
                     greedy and [greedy[u.id] for u in group])

    overall = scores(scored)
    result = EvalResult(**asdict(overall), task=task, decoder=(decoder or DecoderConfig()).describe(),
                        elapsed=elapsed,
                        languages={lang: scores(group) for lang, group in sorted(by_language.items())},
                        skipped=[u.id for u in labeled if u.id not in hypotheses], no_transcript=no_transcript)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {f"hyp.{safe_name(task)}.txt": hypotheses, f"ref.{safe_name(task)}.txt": references}
        if greedy:
            files[f"hyp.{safe_name(task)}.greedy.txt"] = greedy
        for name, lines in files.items():
            (out_dir / name).write_text("".join(f"{u.id} {lines[u.id]}\n" for u in scored), encoding="utf-8")
    return result


def _decode(model: CTCModel, utterances: list[Utterance], max_seconds_per_batch: float, keep_emissions: bool
            ) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Greedy transcripts by utterance id, and with ``keep_emissions`` each one's log-probabilities (for a beam
    search); files that fail to decode are left out."""
    chunked = int(CHUNK_SECONDS * SAMPLE_RATE)
    vocab = model.vocabularies[model.active]
    hypotheses, emissions = {}, {}
    for u in [u for u in utterances if u.num_samples > chunked]:  # in windows, as transcribe does: bounded memory
        try:
            outputs = list(window_outputs(model, read_audio(u.path, raw=u.raw_format), CHUNK_SECONDS))
        except AudioError as e:
            log.warning("skipping %s: %s", u.id, e)
            continue
        hypotheses[u.id] = " ".join(t for output in outputs if (t := model.greedy_decode(output)[0]))
        if keep_emissions:
            emissions[u.id] = np.concatenate([log_probs(output, vocab)[0] for output in outputs])
    utterances = [u for u in utterances if u.num_samples <= chunked]
    cap = int(max_seconds_per_batch * SAMPLE_RATE)
    longer = [u for u in utterances if u.num_samples > cap]
    # Utterances over the cap are batched apart under their own longest length, so the cap holds for the rest.
    groups = [
        ([u for u in utterances if u.num_samples <= cap], max_seconds_per_batch),
        (longer, (max((u.num_samples for u in longer), default=0) + 1) / SAMPLE_RATE),
    ]
    device = next(model.parameters()).device
    for group, seconds in groups:
        if not group:
            continue
        dataset = AudioDataset(group, normalize=model.normalize_waveforms)
        for batch in make_dataloader(dataset, seconds, shuffle=False):
            if batch is None:  # every file of the batch failed
                continue
            output = forward_padded(model, batch["waveforms"].to(device), batch["attention_mask"].to(device))
            hypotheses |= zip(batch["ids"], model.greedy_decode(output), strict=True)
            if keep_emissions:
                emissions |= zip(batch["ids"], log_probs(output, vocab), strict=True)
    return hypotheses, emissions
