"""Shared fixtures: one small synthetic corpus per test session (espeak-ng speaks real sentences)."""

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
