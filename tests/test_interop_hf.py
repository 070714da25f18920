"""Fine-tuned transformers CTC directories (model + processor saved by transformers) load as one wavadapt task
computing transformers' own logits and greedy transcripts; wavadapt tasks train and load beside it."""

import json

import pytest
import torch
from model_probes import AUDIO, perturb, task_logits
from transformers import (
    HubertForCTC,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
    WavLMForCTC,
)
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.text import Vocabulary
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.interop.hf import TASK
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import load_backbone, make_config
from wavadapt.model.checkpoint import backbone_fingerprint, load_task, save_task
from wavadapt.training.methods import MethodConfig, prepare

CTC = {"wav2vec2": Wav2Vec2ForCTC, "hubert": HubertForCTC, "wavlm": WavLMForCTC}
VOCAB = Vocabulary.build(["the quick brown fox jumps", "over the lazy dog"])

LAYER_NORM_CNN = {"do_stable_layer_norm": True, "feat_extract_norm": "layer", "conv_bias": True}


def _save_ctc_dir(path, family="wav2vec2", vocab_json=None, do_normalize=True, seed=0, tokenizer_kwargs=None,
                  **overrides):
    """What a transformers fine-tuning run leaves: save_pretrained of the model and of its processor."""
    path.mkdir(parents=True, exist_ok=True)
    vocab_json = vocab_json or {t: i for i, t in enumerate(VOCAB.tokens)}
    nested = all(isinstance(v, dict) for v in vocab_json.values())
    ids = next(iter(vocab_json.values())) if nested else vocab_json
    torch.manual_seed(seed)
    model = CTC[family](make_config("tiny", family, vocab_size=len(ids), **overrides)).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(std=1.0)  # a varied best path
        # never <s> </s> <unk>: transformers' decode spells them out, wavadapt's drops them
        for token in ("<s>", "</s>", (tokenizer_kwargs or {}).get("unk_token", "<unk>")):
            model.lm_head.bias[ids[token]] = -1e4
    model.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(vocab_json))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), target_lang=next(iter(vocab_json)) if nested else None,
                                     **(tokenizer_kwargs or {}))
    extractor = Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ctc_dir(tmp_path_factory):
    return _save_ctc_dir(tmp_path_factory.mktemp("ctc"))


def test_ctc_dir_is_one_task_with_transformers_logits_and_transcripts(ctc_dir):
    model = load_asr_model(ctc_dir, [])
    assert list(model.heads) == [TASK] and model.active == TASK and model.stacks[TASK] == ()
    assert model.vocabularies[TASK].tokens == VOCAB.tokens
    with torch.no_grad():
        out = model(AUDIO)
        reference = Wav2Vec2ForCTC.from_pretrained(ctc_dir).eval()(AUDIO).logits
    torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=0)
    texts = Wav2Vec2Processor.from_pretrained(ctc_dir).batch_decode(reference.argmax(-1))
    assert all(texts)
    # wavadapt writes one space for a run of word delimiters, transformers one per delimiter
    assert model.greedy_decode(out) == [" ".join(t.split()) for t in texts]


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_hubert_and_wavlm_ctc_dirs_compute_transformers_logits(tmp_path, family):
    path = _save_ctc_dir(tmp_path, family)
    with torch.no_grad():
        reference = CTC[family].from_pretrained(path).eval()(AUDIO).logits
    torch.testing.assert_close(task_logits(load_asr_model(path, [])), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides, do_normalize", [({}, True), (LAYER_NORM_CNN, False)])
def test_feature_extractor_decides_waveform_normalisation(tmp_path, overrides, do_normalize):
    # the opposite of what the CNN's norm suggests (group norm: not normalised; layer norm: normalised)
    path = _save_ctc_dir(tmp_path, do_normalize=do_normalize, **overrides)
    assert load_asr_model(path, []).normalize_waveforms is do_normalize
    (path / "processor_config.json").unlink()
    assert load_asr_model(path, []).normalize_waveforms is (not do_normalize)


def test_nested_vocabulary_names_the_task_by_target_lang(tmp_path):
    fra = Vocabulary.build(["ça va"])
    path = _save_ctc_dir(tmp_path, vocab_json={"deu": {t: i for i, t in enumerate(VOCAB.tokens)},
                                               "fra": {t: i for i, t in enumerate(fra.tokens)}})
    model = load_asr_model(path, [])
    assert list(model.heads) == ["deu"] and model.vocabularies["deu"].tokens == VOCAB.tokens
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps(config | {"target_lang": None}))
    with pytest.raises(CheckpointError, match=r"languages \['deu', 'fra'\]; tokenizer_config.json's target_lang None"):
        load_asr_model(path, [])


def test_new_adapter_task_beside_the_checkpoints_leaves_it_unchanged(ctc_dir, tmp_path):
    model = load_asr_model(ctc_dir, [])
    before = task_logits(model)
    params = prepare(model, "en", Vocabulary.build(["hello world"]), MethodConfig("adapters", adapter_size=16))
    perturb(params.values())
    model.eval()
    assert torch.equal(task_logits(model, TASK), before)
    assert not torch.allclose(task_logits(model, "en")[..., :5], before[..., :5])
    # the task file fingerprints the directory's backbone, the same as load_backbone's
    assert backbone_fingerprint(model.backbone) == backbone_fingerprint(load_backbone(ctc_dir))
    loaded = load_asr_model(ctc_dir, [save_task(model, "en", tmp_path)])
    assert sorted(loaded.heads) == ["ctc", "en"] and loaded.active == "en"
    assert torch.equal(task_logits(loaded, "en"), task_logits(model, "en"))
    assert torch.equal(task_logits(loaded, TASK), before)


def test_head_and_vocabulary_must_agree(tmp_path):
    path = _save_ctc_dir(tmp_path)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB.tokens[:-1])}))
    with pytest.raises(CheckpointError, match=f"lm_head has {len(VOCAB)} outputs, the vocabulary {len(VOCAB) - 1}"):
        load_asr_model(path, [])
    (path / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="no vocab.json"):
        load_asr_model(path, [])


# fairseq's Dictionary order (the blank <pad> at id 1), and that of transformers' run_speech_recognition_ctc.py
# ([UNK] and [PAD] appended after the letters).
@pytest.mark.parametrize("order, special", [
    (["<s>", "<pad>", "</s>", "<unk>", *VOCAB.tokens[4:]], {}),
    ([*VOCAB.tokens[4:], "[UNK]", "[PAD]", "<s>", "</s>"], {"pad_token": "[PAD]", "unk_token": "[UNK]"}),
])
def test_vocabulary_in_another_order_decodes_like_transformers(tmp_path, order, special):
    ids = {t: i for i, t in enumerate(order)}
    pad = special.get("pad_token", "<pad>")
    path = _save_ctc_dir(tmp_path, vocab_json=ids, pad_token_id=ids[pad], tokenizer_kwargs=special)
    model = load_asr_model(path, [])
    assert model.vocabularies[TASK].blank_id == ids[pad]
    with torch.no_grad():
        out = model(AUDIO)
        reference = Wav2Vec2ForCTC.from_pretrained(path).eval()(AUDIO).logits
    torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=0)
    texts = Wav2Vec2Processor.from_pretrained(path).batch_decode(reference.argmax(-1))
    assert model.greedy_decode(out) == [" ".join(t.split()) for t in texts]


def test_finetuning_continues_the_checkpoints_own_task(ctc_dir, synth_corpus, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["finetune", str(synth_corpus), "--language", "en", "--model", str(ctc_dir),
                                      "--task", TASK, "--method", "head-only", "--out", str(run), "--max-updates",
                                      "2", "--valid-split", "", "--lr", "1e-2"])
    assert result.exit_code == 0, result.output
    before = load_asr_model(ctc_dir, [])
    after = load_asr_model(ctc_dir, [])
    del after.heads[TASK]  # the task file replaces the checkpoint's own head with the trained one
    del after.vocabularies[TASK], after.stacks[TASK]
    load_task(after, run / f"adapter.{TASK}.json")
    assert after.vocabularies[TASK].tokens == VOCAB.tokens  # its own vocabulary, not one built from the corpus
    assert not torch.equal(after.heads[TASK].weight, before.heads[TASK].weight)
    assert backbone_fingerprint(after.backbone) == backbone_fingerprint(before.backbone)  # head-only: backbone kept
    with pytest.raises(WavadaptError, match="continue it with full, top-n-full or head-only"):
        prepare(before, TASK, VOCAB, MethodConfig("adapters", adapter_size=8))
