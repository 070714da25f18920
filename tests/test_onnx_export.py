"""A task exported as ONNX (backbone, adapters and head in one graph) runs in onnxruntime with dynamic batch and
length: its logits on zero-padded batches are PyTorch's (1e-4), for a group-norm (Base-type) CNN and a layer-norm
one, and each padded row gives what it gives alone."""

import json

import numpy as np
import onnxruntime
import pytest
import torch
from cli_runner import run_cli
from test_transcription import _two_task_model

from wavadapt.interop.onnx import vocab_file
from wavadapt.model.checkpoint import save_backbone, save_task


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_onnxruntime_gives_pytorch_logits_on_padded_batches(norm, tmp_path, capsys):
    model = _two_task_model(norm)
    backbone, task = save_backbone(model.backbone, tmp_path / "backbone"), save_task(model, "es", tmp_path / "tasks")
    code, out, err = run_cli(capsys, "export", task, "--model", backbone, "--format", "onnx", "--out",
                             tmp_path / "es.onnx")
    assert code == 0, err
    session = onnxruntime.InferenceSession(str(tmp_path / "es.onnx"))
    model.activate("es")
    generator = torch.Generator().manual_seed(3)
    for rows, samples in ((3, 23_456), (1, 8_000)):  # other batch sizes and lengths than the export's example
        x = 0.1 * torch.randn(rows, samples, generator=generator)
        mask = torch.ones(rows, samples, dtype=torch.long)
        mask[-1, samples // 2:] = 0
        logits, lengths = session.run(None, {"waveforms": (x * mask).numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            expected = model(x * mask, mask)
        np.testing.assert_array_equal(lengths, expected.lengths.numpy())
        for i in range(rows):
            n = int(lengths[i])
            np.testing.assert_allclose(logits[i, :n], expected.logits[i, :n].numpy(), atol=1e-4, rtol=0)
    vocab = json.loads(vocab_file(tmp_path / "es.onnx").read_text())
    assert vocab["tokens"] == model.vocabularies["es"].tokens and vocab["task"] == "es"


def test_export_to_onnx_names_a_bad_output_in_one_line(tmp_path, capsys):
    model = _two_task_model("group")
    backbone, task = save_backbone(model.backbone, tmp_path / "backbone"), save_task(model, "es", tmp_path / "tasks")
    code, out, err = run_cli(capsys, "export", task, "--model", backbone, "--format", "onnx", "--out", tmp_path / "x")
    assert code == 1 and err == f"error: --out {tmp_path / 'x'}: an ONNX file's name ends in .onnx\n"
