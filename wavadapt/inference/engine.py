"""The batched padded forward that everything which decodes runs: a mixed-task batch, windows cut at pauses for
long audio, and a corpus decoded greedily in length-sorted batches (with its log-probabilities for a beam search)."""

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from wavadapt.data.audio import SAMPLE_RATE, normalize_waveform, read_audio
from wavadapt.data.batching import AudioDataset, make_dataloader
from wavadapt.data.corpora import Utterance
from wavadapt.decoding import log_probs
from wavadapt.errors import AudioError
from wavadapt.model.ctc import CTCModel, CTCOutput

log = logging.getLogger("wavadapt.inference.engine")

CHUNK_SECONDS = 30.0
"""Longest audio :func:`transcribe` decodes in one forward pass."""


def forward_padded(model: CTCModel, waveforms: torch.Tensor, attention_mask: torch.Tensor,
                   tasks: list[str] | None = None) -> CTCOutput:
    """Run a zero-padded batch with the active task, or ``tasks[i]`` for row i (``CTCModel.forward_mixed``); audio
    shorter than one frame's receptive field (25 ms) decodes to nothing instead of failing in the CNN."""
    lengths = model.output_lengths(attention_mask, *waveforms.shape, device=waveforms.device)
    waveforms, attention_mask = padded_batch(model, waveforms, attention_mask)
    if tasks is not None:
        return CTCOutput(model.forward_mixed(waveforms, tasks, attention_mask=attention_mask).logits, lengths)
    return CTCOutput(model(waveforms, attention_mask=attention_mask).logits, lengths)


def padded_batch(model: CTCModel, waveforms: torch.Tensor, attention_mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch at least one frame long, every row's first frame in its mask (transformers indexes every row's last
    frame: a row shorter than one frame gets one, which is never decoded: its length stays 0)."""
    one_frame = _receptive_field(model.backbone.config)
    if waveforms.shape[1] < one_frame:
        waveforms = nn.functional.pad(waveforms, (0, one_frame - waveforms.shape[1]))
    attention_mask = nn.functional.pad(attention_mask, (0, waveforms.shape[1] - attention_mask.shape[1]))
    attention_mask[:, :one_frame] = 1
    return waveforms, attention_mask


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


def decode_utterances(model: CTCModel, utterances: list[Utterance], max_seconds_per_batch: float, keep_emissions: bool
            ) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Greedy transcripts by utterance id, and with ``keep_emissions`` each one's log-probabilities (for a beam
    search); files that fail to decode are left out."""
    chunked = int(CHUNK_SECONDS * SAMPLE_RATE)
    vocab = model.vocabularies[model.active]
    hypotheses, emissions = {}, {}
    for u in [u for u in utterances if u.num_samples > chunked]:  # in windows, as transcribe does: bounded memory
        try:
            outputs = list(window_outputs(model, read_audio(u.audio, raw=u.raw_format), CHUNK_SECONDS))
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
