"""A backbone with per-task CTC heads: the ASR model every fine-tuning method trains.

A *task* (``en``, ``es/asr``) names a CTC head over its language's characters and the adapter stack the
backbone runs for it: ``()`` for full fine-tuning, ``("en",)`` for an adapter set, ``("es", "es/asr")``
for a task adapter stacked on a language adapter. Activating a task switches both together;
:meth:`CTCModel.forward_mixed` runs one task per batch row instead (a mixed-language batch).
"""

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel

from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import disable_adapters, set_active
from wavadapt.model.backbone import conv_geometry
from wavadapt.model.language_id import LanguageId, run_to_layer
from wavadapt.model.masked_group_norm import masked_group_norm


class CTCOutput(NamedTuple):  # a tuple, so DistributedDataParallel finds its tensors
    logits: torch.Tensor
    """(B, T, V) unnormalised scores per frame."""
    lengths: torch.Tensor
    """(B,) valid frames per utterance."""


class CTCModel(nn.Module):
    """``backbone`` (transformers Wav2Vec2Model / HubertModel / WavLMModel) + ``heads`` (one Linear per task)."""

    def __init__(self, backbone: PreTrainedModel, final_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        if self.group_norm_cnn:
            masked_group_norm(backbone)  # shares the GroupNorm's parameters: names and checkpoints unchanged
        self.heads = nn.ModuleDict()
        self.dropout = nn.Dropout(final_dropout)
        self.vocabularies: dict[str, Vocabulary] = {}
        self.stacks: dict[str, tuple[str, ...]] = {}
        self.active: str | None = None
        self.freeze_backbone = False
        """Run the backbone without autograd (fairseq's freeze_finetune_updates phase of full fine-tuning)."""
        self.do_normalize: bool | None = None
        """A checkpoint's own choice (its feature extractor's ``do_normalize``), set by its loader; None when it
        came without one."""
        self.task_files: dict[str, str] = {}
        """The task file each loaded task came from (named when another file brings the same name)."""
        self.source: dict | None = None
        """Where the model came from (``model``, and ``adapters`` loaded onto it), set by its loader: training
        records it in run.json, so a run folder can be loaded as a model."""
        self.language_id: LanguageId | None = None
        """The spoken-language identifier on this backbone, when one is loaded or trained."""

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    @property
    def group_norm_cnn(self) -> bool:
        """Whether the CNN is Base's, with a GroupNorm over time in its first layer."""
        return self.backbone.config.feat_extract_norm == "group"

    @property
    def normalize_waveforms(self) -> bool:
        """Whether inputs are normalised to zero mean, unit variance: the checkpoint's ``do_normalize`` where it
        has one, else fairseq's convention: models with layer-norm CNNs were trained on normalised waveforms."""
        if self.do_normalize is not None:
            return self.do_normalize
        return self.backbone.config.feat_extract_norm == "layer"

    def add_task(self, name: str, vocab: Vocabulary, adapters: Sequence[str] = ()) -> None:
        """Add a CTC head for ``name`` over ``vocab``, to run on the adapter stack ``adapters``."""
        if name in self.heads:
            raise WavadaptError(f"the model already has a task named {name!r}")
        ref = next(self.backbone.parameters())
        head = nn.Linear(self.hidden_size, len(vocab), device=ref.device, dtype=ref.dtype)
        self.heads[name] = head
        self.vocabularies[name] = vocab
        self.stacks[name] = tuple(adapters)

    def activate(self, task: str) -> None:
        if task not in self.heads:
            raise WavadaptError(f"unknown task {task!r}; the model has {sorted(self.heads)}")
        set_active(self.backbone, self.stacks[task])
        self.active = task

    def output_lengths(self, attention_mask: torch.Tensor | None, batch: int, samples: int,
                       device: torch.device | None = None) -> torch.Tensor:
        lengths = attention_mask.sum(-1) if attention_mask is not None else torch.full((batch,), samples,
                                                                                        device=device)
        return self.backbone._get_feat_extract_output_lengths(lengths).long().clamp(min=0)

    def _encode(self, waveforms: torch.Tensor | None, attention_mask: torch.Tensor | None,
                cnn_features: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        """(B, S) waveforms, or the CNN's (B, C, T) output, -> (B, T, D) hidden states on the current routing
        (dropout applied), (B,) frames."""
        if (waveforms is None) == (cnn_features is None):
            raise WavadaptError("give either waveforms or cnn_features")
        if cnn_features is not None:
            return self._encode_cnn_output(cnn_features, frame_mask)
        lengths = self.output_lengths(attention_mask, *waveforms.shape, device=waveforms.device)
        padding = contextlib.nullcontext()
        if self.group_norm_cnn:
            # A padded batch runs each row as if alone: its first-layer statistics over its own frames, and the mask
            # for the transformer. Unpadded input takes no mask, as transformers' feature extractor gives Base models.
            if attention_mask is not None and bool(attention_mask.all()):
                attention_mask = None
            if attention_mask is not None:
                padding = masked_group_norm(self.backbone).valid_samples(attention_mask.sum(-1))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone), padding:
            hidden = self.backbone(waveforms, attention_mask=attention_mask).last_hidden_state
        return self.dropout(hidden), lengths

    def _encode_cnn_output(self, features: torch.Tensor, frame_mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The backbone's own forward from its frozen CNN's output: the CNN is swapped for a pass-through while it
        runs, and the mask of the audio the real frames cover gives it the frames' mask (all families share this)."""
        ref = next(self.backbone.parameters())
        features = features.to(device=ref.device, dtype=ref.dtype)
        batch, _, frames = features.shape
        lengths = (frame_mask.sum(-1).long() if frame_mask is not None else torch.full((batch,), frames)).to(ref.device)
        attention_mask = None
        if bool((lengths < frames).any()):
            field, hop = conv_geometry(self.backbone.config)
            samples = (lengths - 1) * hop + field
            positions = torch.arange(int(samples.max()), device=samples.device)
            attention_mask = (positions[None, :] < samples[:, None]).to(ref.device).int()
        cnn = self.backbone.feature_extractor
        self.backbone.feature_extractor = nn.Identity()
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
                hidden = self.backbone(features, attention_mask=attention_mask).last_hidden_state
        finally:
            self.backbone.feature_extractor = cnn
        return self.dropout(hidden), lengths.to(hidden.device)

    def forward(self, waveforms: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                cnn_features: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None) -> CTCOutput:
        """(B, S) 16 kHz waveforms -> (B, T, V) logits of the active task.

        Instead of waveforms, the (frozen) CNN's (B, C, T) output can be given as ``cnn_features`` (cached:
        ``wavadapt.training.feature_cache``) with the (B, T) bool ``frame_mask`` of its real frames."""
        if self.active is None:
            raise WavadaptError("no active task: call activate(task) first")
        hidden, lengths = self._encode(waveforms, attention_mask, cnn_features, frame_mask)
        return CTCOutput(self.heads[self.active](hidden), lengths)

    def forward_mixed(self, waveforms: torch.Tensor, tasks: Sequence[str],
                      attention_mask: torch.Tensor | None = None) -> CTCOutput:
        """Like :meth:`forward` with one task per batch row: row i runs ``tasks[i]``'s adapter stack and head.

        Rows share one (B, T, V) tensor, V the largest vocabulary, so a row's scores beyond its own vocabulary are
        ``-inf`` (never the argmax, zero probability); decode with ``greedy_decode(output, tasks)``. The active
        task is unchanged.
        """
        unknown = sorted(set(tasks) - set(self.heads))
        if unknown:
            raise WavadaptError(f"unknown task(s) {unknown}; the model has {sorted(self.heads)}")
        if len(tasks) != waveforms.shape[0]:
            raise WavadaptError(f"{len(tasks)} tasks for a batch of {waveforms.shape[0]}")
        set_active(self.backbone, per_sample=[self.stacks[t] for t in tasks])
        try:
            hidden, lengths = self._encode(waveforms, attention_mask)
        finally:
            set_active(self.backbone, self.stacks[self.active] if self.active else None)
        width = max(self.heads[t].out_features for t in tasks)
        logits = hidden.new_full((*hidden.shape[:2], width), float("-inf"))
        for task in dict.fromkeys(tasks):
            rows = torch.tensor([i for i, t in enumerate(tasks) if t == task], device=hidden.device)
            logits[rows, :, : self.heads[task].out_features] = self.heads[task](hidden[rows])
        return CTCOutput(logits, lengths)

    def identify(self, waveforms: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, languages) identification scores of each row (``language_id.labels``): the bare backbone runs up to
        the identifier's layer only, without autograd (it is frozen)."""
        if self.language_id is None:
            raise WavadaptError("the model has no language identifier: load its task file (adapter.lid.json)")
        lengths = self.output_lengths(attention_mask, *waveforms.shape, device=waveforms.device)
        with torch.no_grad(), disable_adapters(self.backbone):
            hidden = run_to_layer(lambda: self._encode(waveforms, attention_mask), self.backbone,
                                  self.language_id.layer)
        return self.language_id(hidden, lengths)

    def ctc_loss(self, output: CTCOutput, labels: torch.Tensor, label_lengths: torch.Tensor) -> torch.Tensor:
        """CTC loss summed over the batch, in fp32; the training loop divides by the utterances of the whole
        update (all accumulation steps and ranks), fairseq's sentence_avg, so the update does not depend on
        how the global batch is split."""
        log_probs = output.logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
        blank = self.vocabularies[self.active].blank_id
        targets = labels.clamp(min=0)  # -100 padding beyond label_lengths is never read
        return nn.functional.ctc_loss(log_probs, targets, output.lengths, label_lengths, blank=blank,
                                      reduction="sum", zero_infinity=True)

    @torch.no_grad()
    def greedy_decode(self, output: CTCOutput, tasks: Sequence[str] | None = None) -> list[str]:
        """Best path per utterance: argmax per frame, repeats collapsed, blanks removed; in the active task's
        vocabulary, or row i in ``tasks[i]``'s (an output of :meth:`forward_mixed`)."""
        best = output.logits.argmax(-1)
        tasks = tasks or [self.active] * best.shape[0]
        return [self.vocabularies[t].ctc_decode(best[i, : output.lengths[i]].tolist()) for i, t in enumerate(tasks)]
