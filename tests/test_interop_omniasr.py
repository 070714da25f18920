"""Omnilingual ASR CTC checkpoints in transformers' layout, written by transformers' own OmniASRForCTC and a
SentencePiece-style character tokenizer: loaded as a wav2vec 2.0 backbone with one task, their logits are
transformers' own on the same weights."""

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import OmniASRCTCConfig, OmniASRForCTC, PreTrainedTokenizerFast
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.interop.loading import load_asr_model
from wavadapt.interop.omniasr import TASK

TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", *"abcdeilnorst"]  # blank 0, as Omnilingual's CTC models


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("omniasr")
    torch.manual_seed(0)
    config = OmniASRCTCConfig(vocab_size=len(TOKENS), blank_token_id=0, audio_config={
        "model_type": "omniasr_audio", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4})
    model = OmniASRForCTC(config).eval()
    with torch.no_grad():  # a trained-looking head and positional conv, not the initialisation's
        for p in (model.ctc_head.weight, model.model.audio_tower.encode_positions.conv.weight):
            p.normal_(0, 0.2)
    model.save_pretrained(path)
    vocab = {t: i for i, t in enumerate(TOKENS)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), unk_token="<unk>",
                            pad_token="<pad>", bos_token="<s>", eos_token="</s>").save_pretrained(path)
    return path, model


def test_an_omnilingual_checkpoint_gives_transformers_logits(checkpoint):
    path, reference = checkpoint
    model = load_asr_model(path, [])
    assert model.active == TASK and model.normalize_waveforms
    assert model.vocabularies[TASK].tokens[4] == "|" and model.vocabularies[TASK].blank == "<s>"
    x = 0.1 * torch.randn(2, 16_000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(input_values=x[:, None]).logits  # its CNN takes (B, 1, S)
        got = model(x).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    mask = torch.ones(2, 16_000, dtype=torch.long)
    mask[1, 9_000:] = 0  # a padded batch: its short row gives what that row gives alone in transformers' model
    with torch.no_grad():
        padded = model(x * mask, mask)
        alone = reference(input_values=x[1:, None, :9_000]).logits[0]
    torch.testing.assert_close(padded.logits[1, : int(padded.lengths[1])], alone, atol=1e-5, rtol=1e-4)
    text = model.greedy_decode(model(x[:1]))[0]
    assert set(text) <= set("abcdeilnorst ")


def test_adapters_fine_tune_on_an_omnilingual_backbone(checkpoint, synth_corpus, tmp_path):
    path, _ = checkpoint
    result = CliRunner().invoke(app, ["finetune", str(synth_corpus), "--language", "en", "--model", str(path), "--out",
                                      str(tmp_path / "run"), "--method", "top-n-adapters", "--top-n", "1",
                                      "--max-updates", "2", "--max-seconds-per-batch", "8", "--valid-split", ""])
    assert result.exit_code == 0, result.output
    both = load_asr_model(path, [tmp_path / "run" / "adapter.en.json"])
    assert set(both.heads) == {TASK, "en"}  # the checkpoint's own task beside the new one, on one backbone
