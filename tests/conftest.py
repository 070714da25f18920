"""Shared fixtures: one small synthetic corpus per test session (espeak-ng speaks real sentences), and the device the
device-aware tests run on (`make test-gpu`: WAVADAPT_TEST_DEVICE=cuda)."""

import os
from pathlib import Path

import pytest
import torch

from wavadapt.data.synth import synthesize_corpus

# Tiny models on 2 cores: one thread per process avoids oversubscription (much faster small matmuls).
torch.set_num_threads(1)

TINY_MINUTES = {"pretrain": 0.2, "train": 0.15, "dev": 0.1, "test": 0.1}


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """English (LibriSpeech layout) + Spanish (Common Voice layout), a few utterances per split."""
    root = tmp_path_factory.mktemp("synth")
    synthesize_corpus(root, languages=("en", "es"), minutes=TINY_MINUTES, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def device() -> torch.device:
    """WAVADAPT_TEST_DEVICE (default cpu). The parity, routing, exact-batching and server tests take it, so that
    `make test-gpu` runs those same tests on a GPU; without one they are skipped, saying so. TF32 is off: the
    tests compare with transformers to fp32's precision."""
    name = os.environ.get("WAVADAPT_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"WAVADAPT_TEST_DEVICE={name}, but this machine has no CUDA device (torch {torch.__version__})")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return torch.device(name)

