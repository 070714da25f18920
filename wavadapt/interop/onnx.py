"""One task as an ONNX graph (``wavadapt export --format onnx``): the backbone, the task's adapters and its head
inside one graph that onnxruntime runs, with dynamic batch and length axes; its vocabulary beside it.

The graph takes ``waveforms`` (B, S) float32 (normalised per utterance where the model wants it, as wavadapt's
readers do) and ``attention_mask`` (B, S) int64 (1 = audio) and gives ``logits`` (B, T, V) and ``lengths`` (B,): a
zero-padded batch's rows give what each gives alone, as in PyTorch, because the graph always runs the masked path
(a group-norm CNN normalises each row over its own frames; an unpadded batch's mask is all ones, which is the
same computation). ``X.onnx`` gets ``X.vocab.json``: the tokens in id order, the blank, the unknown token and
whether waveforms are normalised.
"""

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from wavadapt.errors import WavadaptError
from wavadapt.model.ctc import CTCModel
from wavadapt.model.masked_group_norm import masked_group_norm

OPSET = 18


class _Graph(nn.Module):
    """``model`` on ``task``, its forward free of the data-dependent shortcuts that export cannot follow."""

    def __init__(self, model: CTCModel, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        samples = attention_mask.sum(-1)
        rows = masked_group_norm(self.model.backbone).valid_samples(samples) if self.model.group_norm_cnn \
            else contextlib.nullcontext()
        with rows:
            hidden = self.model.backbone(waveforms, attention_mask=attention_mask).last_hidden_state
        lengths = self.model.backbone._get_feat_extract_output_lengths(samples).long()
        return self.model.heads[self.task](hidden), lengths


def export_onnx(model: CTCModel, task: str, out: Path) -> Path:
    """Write ``task`` of ``model`` (eval mode, on the CPU) as ``out`` (.onnx) and its vocabulary beside it."""
    check_onnx_name(out)
    if task not in model.heads:
        raise WavadaptError(f"no task {task!r} to export; the model has {sorted(model.heads)}")
    model = model.eval().cpu()
    model.activate(task)
    batch, length = torch.export.Dim("batch", max=1024), torch.export.Dim("samples", min=1000, max=16_000 * 3600)
    example = (torch.zeros(2, 16_000), torch.ones(2, 16_000, dtype=torch.long))
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(_Graph(model, task), example, out, dynamo=True, opset_version=OPSET,
                          input_names=["waveforms", "attention_mask"], output_names=["logits", "lengths"],
                          dynamic_shapes={"waveforms": {0: batch, 1: length},
                                          "attention_mask": {0: batch, 1: length}},
                          verbose=False)
    vocab = model.vocabularies[task]
    vocab_file(out).write_text(json.dumps({"task": task, "tokens": vocab.tokens, "blank": vocab.blank,
                                           "unk": vocab.unk, "normalize": model.normalize_waveforms},
                                          ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def check_onnx_name(out: Path) -> None:
    if out.suffix != ".onnx":
        raise WavadaptError(f"--out {out}: an ONNX file's name ends in .onnx")


def vocab_file(onnx_file: Path) -> Path:
    return onnx_file.with_suffix(".vocab.json")
