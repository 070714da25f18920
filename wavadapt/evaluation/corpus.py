"""WER and CER of a task on a corpus (jiwer), per language: greedy, or a beam search with an LM beside greedy."""

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jiwer

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.data.batching import filter_by_length, transcribed
from wavadapt.data.corpora import Utterance, require_unique_ids
from wavadapt.data.text import normalize_text
from wavadapt.decoding import DecoderConfig, decode_in_processes, texts
from wavadapt.errors import WavadaptError
from wavadapt.evaluation.bootstrap import edit_counts, interval
from wavadapt.inference.engine import decode_utterances, evaluating
from wavadapt.inference.transcription import Request, transcribe_requests
from wavadapt.model.auto_routing import AUTO, AUTO_DEFAULTS, AutoConfig, check_requests
from wavadapt.model.checkpoint import safe_name
from wavadapt.model.ctc import CTCModel


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
    wer_interval: list[float] | None = None
    cer_interval: list[float] | None = None
    greedy_wer_interval: list[float] | None = None
    greedy_cer_interval: list[float] | None = None
    """95% bootstrap intervals over the utterances (:mod:`wavadapt.evaluation.bootstrap`)."""


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
    counts: dict[str, list[int]] = field(default_factory=dict)
    """Per scored utterance (by id, in input order): word edits, words, character edits, characters
    (``bootstrap.edit_counts``), which a paired comparison of two results on the same utterances needs."""
    greedy_counts: dict[str, list[int]] | None = None
    """The same of greedy decoding, beside a beam search's."""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A table of WER / CER per language (and overall when there are several)."""
        beam = self.greedy_wer is not None
        lines = [
            f"task {self.task}: {self.utterances} utterances, {self.seconds:.1f} s of audio decoded ({self.decoder}) "
            f"in {self.elapsed:.1f} s; {len(self.skipped)} unreadable and {len(self.no_transcript)} without a "
            "transcript skipped",
            f"{'language':<10}{'utterances':>11}{'WER':>9}{'95% interval':>16}{'CER':>9}{'95% interval':>16}"
            + (f"{'greedy WER':>12}{'CER':>9}" if beam else ""),
        ]
        rows = list(self.languages.items()) + ([("all", self)] if len(self.languages) > 1 else [])
        lines += [f"{lang:<10}{s.utterances:>11}{s.wer:>9.2%}{_interval(s.wer_interval):>16}{s.cer:>9.2%}"
                  f"{_interval(s.cer_interval):>16}" + (f"{s.greedy_wer:>12.2%}{s.greedy_cer:>9.2%}" if beam else "")
                  for lang, s in rows]
        return "\n".join(lines)


def _interval(bounds: list[float] | None) -> str:
    return "-" if bounds is None else f"{100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%"


def score(references: list[str], hypotheses: list[str], seconds: float = 0.0, greedy: list[str] | None = None
          ) -> Scores:
    """Corpus WER and CER of normalised reference / hypothesis pairs with their 95% bootstrap intervals (and the
    rates of greedy hypotheses beside a beam's)."""
    result = Scores(jiwer.wer(references, hypotheses), jiwer.cer(references, hypotheses), len(references), seconds)
    counts = edit_counts(references, hypotheses)
    result.wer_interval, result.cer_interval = list(interval(counts, "wer")), list(interval(counts, "cer"))
    if greedy is not None:
        result.greedy_wer, result.greedy_cer = jiwer.wer(references, greedy), jiwer.cer(references, greedy)
        counts = edit_counts(references, greedy)
        result.greedy_wer_interval, result.greedy_cer_interval = (list(interval(counts, "wer")),
                                                                  list(interval(counts, "cer")))
    return result


def evaluate(
    model: CTCModel,
    utterances: list[Utterance],
    task: str | None = None,
    max_seconds_per_batch: float = 60.0,
    language: str | None = None,
    out_dir: str | Path | None = None,
    decoder: DecoderConfig | None = None,
    auto: AutoConfig = AUTO_DEFAULTS,
) -> EvalResult:
    """Decode ``utterances`` with ``task`` (default: the active one) and score them: greedily, or with the beam
    search of ``decoder``, whose scores then come with greedy decoding's of the same logits beside them.

    References are ``normalize_text(text, language or utterance.language)``; hypotheses are in the task's
    character set already. Results are grouped by ``Utterance.language``. Utterances without a transcript are
    skipped and listed (``no_transcript``), and so are unreadable files (``skipped``). Utterances are batched
    by length (longer ones than ``max_seconds_per_batch`` are batched apart), exactly for every CNN (a padded
    row decodes as it does alone: ``CTCModel`` masks the padding); those over ``engine.CHUNK_SECONDS`` are decoded in
    windows as by ``engine.transcribe`` (a beam search reads the windows' log-probabilities joined). With ``out_dir``,
    writes ``hyp.<task>.txt`` and ``ref.<task>.txt`` (``<id> <text>`` lines, in input order), and
    ``hyp.<task>.greedy.txt`` beside a beam search's.

    ``task`` ``auto`` or ``a+b`` routes every utterance (:mod:`wavadapt.model.auto_routing`, with ``auto``) and
    decodes it as ``transcribe`` does.
    """
    task = task or model.active
    if task is None:
        raise WavadaptError("no task to evaluate: the model has no active task")
    routed = task == AUTO or "+" in task
    if routed:
        check_requests(model, {task})
    else:
        model.activate(task)
    require_unique_ids(utterances)
    # A test line with a foreign word is scored without it (the model cannot spell it): `check` names such lines.
    labeled, no_transcript, _, _ = transcribed(utterances, language, keep_foreign=True)
    if not labeled:
        raise WavadaptError(f"none of the {len(utterances)} utterances has a transcript to score against")

    start = time.perf_counter()
    readable = filter_by_length(labeled).kept  # fills lengths from headers, drops unreadable headers
    beam = decoder is not None and decoder.kind == "beam" and not routed
    if routed:
        transcripts = transcribe_requests(model, [Request(u.audio, task, u.raw_format) for u in readable],
                                          max_seconds_per_batch, auto=auto)
        hypotheses = {u.id: t.text for u, t in zip(readable, transcripts, strict=True) if t.error is None}
    else:
        with evaluating(model):
            hypotheses, emissions = decode_utterances(model, readable, max_seconds_per_batch, beam)
    greedy = None
    if beam:
        ids = list(emissions)
        workers = min(os.cpu_count() or 1, max(1, len(ids) // 16))  # a process loads the LM in a second or so
        greedy, hypotheses = hypotheses, dict(zip(ids, texts(decode_in_processes(
            decoder, model.vocabularies[task], [emissions[i] for i in ids], workers)), strict=True))
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
    ids = [u.id for u in scored]
    result.counts = dict(zip(ids, edit_counts([references[i] for i in ids], [hypotheses[i] for i in ids]),
                             strict=True))
    if greedy:
        result.greedy_counts = dict(zip(ids, edit_counts([references[i] for i in ids], [greedy[i] for i in ids]),
                                        strict=True))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {f"hyp.{safe_name(task)}.txt": hypotheses, f"ref.{safe_name(task)}.txt": references}
        if greedy:
            files[f"hyp.{safe_name(task)}.greedy.txt"] = greedy
        for name, lines in files.items():
            (out_dir / name).write_text("".join(f"{u.id} {lines[u.id]}\n" for u in scored), encoding="utf-8")
    return result
