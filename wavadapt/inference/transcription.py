"""Batched offline transcription: many files, each with its own task, in mixed-task batches.

Files are measured from their headers, sorted by length and packed into batches under a cap of padded audio
seconds (little padding, so batching pays); each batch is one forward with every row on its own task
(``CTCModel.forward_mixed``). Audio longer than ``chunk_seconds`` is cut into windows at pauses
(``engine.cut_at_pauses``) that batch like files and are joined back. Each request names its decoder (greedy
by default, or a beam search with its LM: :mod:`wavadapt.decoding`); words carry times from the frames of the
decoded path (20 ms for the papers' encoder). Results come back in input order; a bad file is a result with an
``error``.
"""

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wavadapt.data.audio import SAMPLE_RATE, AudioSource, normalize_waveform, read_audio
from wavadapt.data.corpora import samples_at_16k
from wavadapt.decoding import DecoderConfig, DecoderPool
from wavadapt.errors import AudioError, WavadaptError
from wavadapt.inference.engine import CHUNK_SECONDS, cut_at_pauses, evaluating, forward_padded, padded_batch
from wavadapt.model.auto_routing import AUTO, AUTO_DEFAULTS, AutoConfig, check_requests, route
from wavadapt.model.ctc import CTCModel

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_batch_seconds(device: torch.device) -> float:
    """Padded audio seconds per batch: on CPU, big batches cost more per sample (the CNN's activations leave the
    caches: measured 24 audio-s/s at 25 s against 32 at 12.5 s on the tiny shape); a GPU wants them large."""
    return 200.0 if device.type == "cuda" else 12.5


@dataclass(frozen=True)
class Request:
    """One file (or record) to transcribe, with its task, its decoder (None: greedy) and the format of a headerless
    file."""

    path: AudioSource
    task: str
    raw_format: str | None = None
    decoder: DecoderConfig | None = None


@dataclass
class Word:
    word: str
    start: float
    end: float
    """Seconds from the start of the file."""


@dataclass
class Transcript:
    path: str
    task: str
    text: str = ""
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0
    error: str | None = None
    """Why the file could not be read (its text is then empty)."""
    language: str | None = None
    language_probability: float | None = None
    """The language identified, where the request asked for ``auto`` or a combination weighted by it."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Piece:
    """A file, or one window of a long file, as a batch row."""

    request: int
    samples: int
    offset: float = 0.0
    audio: np.ndarray | None = None
    """Read up front for windows; files are read when their batch runs."""


def transcribe_requests(model: CTCModel, requests: Sequence[Request], max_seconds_per_batch: float | None = None,
                        chunk_seconds: float | None = CHUNK_SECONDS, progress: bool = False,
                        precision: str = "fp32", pool: DecoderPool | None = None,
                        auto: AutoConfig = AUTO_DEFAULTS) -> list[Transcript]:
    """Transcripts of ``requests``, in their order (see the module's docstring); ``precision`` bf16 or fp16 runs the
    model under autocast (GPU only); ``pool`` keeps beam decoders (and their LMs) for the next call; ``auto`` routes
    the requests for ``auto`` and ``a+b`` (:mod:`wavadapt.model.auto_routing`)."""
    check_requests(model, {r.task for r in requests})
    results = [Transcript(str(r.path), r.task) for r in requests]
    pieces = []
    for i, r in enumerate(requests):
        try:
            samples = samples_at_16k(r.path, r.raw_format)
            if chunk_seconds is not None and samples > chunk_seconds * SAMPLE_RATE:
                audio = read_audio(r.path, raw=r.raw_format)
                samples = len(audio)
                pieces += _windows(i, audio, chunk_seconds)
            else:
                pieces.append(_Piece(i, samples))
            results[i].duration = samples / SAMPLE_RATE
        except AudioError as e:
            results[i].error = str(e)
    return _decode_pieces(model, requests, pieces, results, max_seconds_per_batch, pool or DecoderPool(), progress,
                          precision, auto)


def transcribe_waveforms(model: CTCModel, items: Sequence[tuple[np.ndarray, str]], names: Sequence[str] | None = None,
                         max_seconds_per_batch: float | None = None,
                         chunk_seconds: float | None = CHUNK_SECONDS,
                         decoders: Sequence[DecoderConfig | None] | None = None,
                         pool: DecoderPool | None = None, auto: AutoConfig = AUTO_DEFAULTS) -> list[Transcript]:
    """Transcripts of decoded audio (16 kHz mono float32, with its task and, in ``decoders``, its decoder), in order:
    ``transcribe_requests`` for audio already in memory (a server's uploads); ``names`` become the transcripts'
    paths."""
    check_requests(model, {task for _, task in items})
    names = names or [f"<audio {i}>" for i in range(len(items))]
    decoders = decoders or [None] * len(items)
    requests = [Request(Path(name), task, decoder=decoder)
                for name, (_, task), decoder in zip(names, items, decoders, strict=True)]
    results = [Transcript(name, task, duration=len(audio) / SAMPLE_RATE)
               for name, (audio, task) in zip(names, items, strict=True)]
    pieces = [piece for i, (audio, _) in enumerate(items) for piece in _windows(i, audio, chunk_seconds)]
    return _decode_pieces(model, requests, pieces, results, max_seconds_per_batch, pool or DecoderPool(), auto=auto)


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise WavadaptError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise WavadaptError(f"precision {precision} is autocast on a GPU; on {device.type} transcription runs in fp32")
    return torch.autocast("cuda", dtype=PRECISIONS[precision])


def compile_model(model: CTCModel) -> None:
    """Compile the backbone's forward with torch.compile (dynamic shapes; the module and its names stay). Each new
    batch shape compiles first: 130 s, then 65 s per new shape, for the tiny shape on this 2-core CPU, after which
    it ran 2.3x faster than eager (transcripts compared in benchmarks/inference.py). Pays on long runs only."""
    model.backbone.forward = torch.compile(model.backbone.forward, dynamic=True)


def _windows(request: int, audio: np.ndarray, chunk_seconds: float | None) -> list[_Piece]:
    """Audio in memory as its windows (one when it is short), each placed at its offset in the file."""
    pieces, offset = [], 0
    for window in cut_at_pauses(audio, chunk_seconds):
        pieces.append(_Piece(request, len(window), offset / SAMPLE_RATE, window))
        offset += len(window)
    return pieces


def _decode_pieces(model: CTCModel, requests: Sequence[Request], pieces: list[_Piece], results: list[Transcript],
                   max_seconds_per_batch: float | None, pool: DecoderPool, progress: bool = False,
                   precision: str = "fp32", auto: AutoConfig = AUTO_DEFAULTS) -> list[Transcript]:
    """Run the pieces in length-sorted batches and join each file's windows back into its transcript."""
    device = next(model.parameters()).device
    autocast = _autocast(device, precision)
    batches = list(_batches(pieces, max_seconds_per_batch or default_batch_seconds(device)))
    decoded: dict[int, list[tuple[float, list[Word]]]] = {}
    with evaluating(model), autocast:
        for batch in tqdm(batches, desc="transcribing", unit="batch", disable=None if progress else True):
            for piece, words in _run(model, requests, batch, results, device, pool, auto):
                decoded.setdefault(piece.request, []).append((piece.offset, words))
    for i, found in decoded.items():
        if results[i].error is None:
            results[i].words = [w for _, words in sorted(found, key=lambda f: f[0]) for w in words]
            results[i].text = " ".join(w.word for w in results[i].words)
    return results


def _batches(pieces: list[_Piece], cap: float) -> Iterator[list[_Piece]]:
    """Length-sorted batches whose padded size (longest row x rows) stays under ``cap`` seconds (a longer piece
    alone)."""
    batch: list[_Piece] = []
    for piece in sorted(pieces, key=lambda p: p.samples):
        if batch and piece.samples * (len(batch) + 1) > cap * SAMPLE_RATE:
            yield batch
            batch = []
        batch.append(piece)
    if batch:
        yield batch


def _run(model: CTCModel, requests: Sequence[Request], batch: list[_Piece], results: list[Transcript],
         device: torch.device, pool: DecoderPool, auto: AutoConfig) -> Iterator[tuple[_Piece, list[Word]]]:
    """Decode one batch; a file that fails to decode now gets its error and no row."""
    rows, waves = [], []
    for piece in batch:
        request = requests[piece.request]
        try:
            audio = piece.audio if piece.audio is not None else read_audio(request.path, raw=request.raw_format)
        except AudioError as e:
            results[piece.request].error = str(e)
            continue
        rows.append(piece)
        waves.append(normalize_waveform(audio) if model.normalize_waveforms else audio)
    if not rows:
        return
    sizes = torch.tensor([len(w) for w in waves])
    mask = (torch.arange(int(sizes.max()))[None, :] < sizes[:, None]).int().to(device)
    x = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in waves], batch_first=True).to(device)
    tasks = [requests[p.request].task for p in rows]
    frame = math.prod(model.backbone.config.conv_stride) / SAMPLE_RATE
    if any(t == AUTO or "+" in t for t in tasks):
        decoded = _routed(model, requests, rows, x, mask, pool, auto, results)
    else:
        if len(set(tasks)) == 1:
            model.activate(tasks[0])
        output = forward_padded(model, x, mask, tasks if len(set(tasks)) > 1 else None)
        logits = output.logits.float().cpu()
        decoded = (pool.decode_row(requests[piece.request].decoder, model.vocabularies[tasks[i]],
                                   logits[i, : output.lengths[i]]) for i, piece in enumerate(rows))
    for piece, words in zip(rows, decoded, strict=True):
        yield piece, [Word(w, round(piece.offset + s * frame, 3), round(piece.offset + e * frame, 3))
                      for w, s, e in words]


def _routed(model: CTCModel, requests: Sequence[Request], rows: list[_Piece], x: torch.Tensor, mask: torch.Tensor,
            pool: DecoderPool, auto: AutoConfig, results: list[Transcript]) -> list[list[tuple[str, int, int]]]:
    """A batch with rows for ``auto`` or a combination: each row's route (recorded in its transcript) and words. A
    row routed to one task is decoded in that task's vocabulary, by the request's decoder when it named the task;
    a combination greedily in the merged vocabulary."""
    # Before padding: a row under one frame decodes to nothing.
    lengths = model.output_lengths(mask, *x.shape, device=x.device)
    x, mask = padded_batch(model, x, mask)
    output, vocabulary, routes = route(model, x, [requests[p.request].task for p in rows], auto, mask)
    logits, decoded = output.logits.float().cpu(), []
    for i, (piece, r) in enumerate(zip(rows, routes, strict=True)):
        result, request = results[piece.request], requests[piece.request]
        if piece.offset == 0:  # a long file's first window names its route
            result.task, result.language, result.language_probability = r.task, r.language, r.probability
        row = logits[i, : lengths[i]]
        if len(r.components) == 1:
            own = model.vocabularies[r.task]
            columns = [vocabulary.tokens.index({own.blank: vocabulary.blank, own.unk: vocabulary.unk}.get(t, t))
                       for t in own.tokens]
            decoder = request.decoder if request.task == r.task else None
            decoded.append(pool.decode_row(decoder, own, row[:, columns]))
        else:
            decoded.append(vocabulary.ctc_words(row.argmax(-1).tolist()))
    return decoded
