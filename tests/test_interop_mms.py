"""MMS's adapter layout against transformers itself: a directory written with transformers' own ``_get_adapters``,
``save_pretrained`` and safetensors loads into wavadapt with a task per language computing what transformers'
``load_adapter(lang)`` computes, alone and in mixed batches; wavadapt's mms-form tasks export back to it."""

import json
import shutil

import pytest
import torch
from model_probes import perturb
from safetensors.torch import load_file, save_file
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Model,
    Wav2Vec2Processor,
    WavLMConfig,
    WavLMModel,
)
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.text import Vocabulary
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.interop.loading import load_asr_model
from wavadapt.interop.mms import export_mms, load_mms_dir
from wavadapt.model.adapters import adapter_config, adapter_names
from wavadapt.model.backbone import load_backbone
from wavadapt.model.checkpoint import backbone_fingerprint, save_task
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import MethodConfig, prepare

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, conv_dim=(16,) * 7,
             num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, do_stable_layer_norm=True,
             feat_extract_norm="layer", conv_bias=True)
ATTN_DIM = 8
VOCABS = {  # three sizes, so each language needs its own head
    "eng": Vocabulary.build(["the quick brown fox"]),
    "deu": Vocabulary.build(["über den zaun springt er"]),
    "fra": Vocabulary.build(["ça va très bien merci"]),
}
MAIN = "eng"
AUDIO = torch.randn(3, 4000, generator=torch.Generator().manual_seed(0))


def _write_mms_dir(path, seed=0):
    """MMS's layout: model.safetensors holds the backbone + eng's adapter layers and lm_head, adapter.<lang>.safetensors
    the other languages' (what ``_get_adapters`` returns), vocab.json one vocabulary per language."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**SMALL, adapter_attn_dim=ATTN_DIM, vocab_size=len(VOCABS[MAIN]))).eval()
    languages = {}
    for lang, vocab in VOCABS.items():
        model.lm_head = torch.nn.Linear(SMALL["hidden_size"], len(vocab))
        with torch.no_grad():  # far from identity, so a wrong adapter shows
            for p in model._get_adapters().values():
                p.normal_(std=0.3)
            model.lm_head.bias[1:4] = -1e4  # never <s> </s> <unk>: transformers spells them out, wavadapt drops them
        languages[lang] = {k: p.detach().clone() for k, p in model._get_adapters().items()}
        if lang != MAIN:
            save_file(languages[lang], path / f"adapter.{lang}.safetensors")
    model.lm_head = torch.nn.Linear(SMALL["hidden_size"], len(VOCABS[MAIN]))
    model.load_state_dict(languages[MAIN], strict=False)
    model.save_pretrained(path)
    nested = {lang: {t: i for i, t in enumerate(v.tokens)} for lang, v in VOCABS.items()}
    (path / "vocab.json").write_text(json.dumps(nested))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), target_lang=MAIN)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def mms_dir(tmp_path_factory):
    return _write_mms_dir(tmp_path_factory.mktemp("mms"))


@pytest.fixture(scope="module")
def reference(mms_dir):
    """transformers' logits per language: the main one from model.safetensors, the others by load_adapter."""
    model = Wav2Vec2ForCTC.from_pretrained(mms_dir).eval()
    logits = {}
    with torch.no_grad():
        for lang in VOCABS:
            if lang != MAIN:
                model.load_adapter(lang)
            logits[lang] = model(AUDIO).logits
    return logits


def _logits(model, lang, x=AUDIO):
    model.activate(lang)
    with torch.no_grad():
        return model(x).logits


def test_every_language_is_a_task_computing_transformers_logits(mms_dir, reference):
    model = load_asr_model(mms_dir, [])
    assert sorted(model.heads) == sorted(VOCABS) and model.active == MAIN
    assert model.normalize_waveforms is True
    for lang, vocab in VOCABS.items():
        assert model.stacks[lang] == (lang,) and adapter_config(model.backbone, lang).form == "mms"
        assert model.vocabularies[lang].tokens == vocab.tokens
        torch.testing.assert_close(_logits(model, lang), reference[lang], atol=1e-5, rtol=0)


def test_mixed_batch_equals_each_rows_language(mms_dir, reference):
    model = load_mms_dir(mms_dir)
    tasks = ["deu", "eng", "fra"]
    with torch.no_grad():
        out = model.forward_mixed(AUDIO, tasks)
    assert out.logits.shape[-1] == max(len(v) for v in VOCABS.values())
    tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(mms_dir)
    texts = model.greedy_decode(out, tasks)
    for i, lang in enumerate(tasks):
        size = len(VOCABS[lang])
        torch.testing.assert_close(out.logits[i, :, :size], reference[lang][i], atol=1e-5, rtol=0)
        assert torch.isneginf(out.logits[i, :, size:]).all()
        tokenizer.set_target_lang(lang)
        assert texts[i] == " ".join(tokenizer.decode(reference[lang][i].argmax(-1)).split())
    assert any(texts)
    assert model.active == MAIN  # the routing of the active task is back


def test_backbone_leaves_the_adapters_out(mms_dir):
    model = load_mms_dir(mms_dir)
    bare = load_backbone(mms_dir)
    assert bare.config.adapter_attn_dim is None
    assert not any("adapter_layer" in k for k in bare.state_dict())
    assert backbone_fingerprint(model.backbone) == backbone_fingerprint(bare)
    # the same base weights as a plain pre-LN model: the adapters are the languages', not the backbone's
    plain = Wav2Vec2Model(Wav2Vec2Config(**SMALL))
    plain.load_state_dict(bare.state_dict())
    assert backbone_fingerprint(plain) == backbone_fingerprint(bare)


def test_task_and_languages_options(mms_dir, reference):
    model = load_mms_dir(mms_dir, task="fra", languages=["fra", "eng"])
    assert sorted(model.heads) == ["eng", "fra"] and model.active == "fra"
    torch.testing.assert_close(_logits(model, "fra"), reference["fra"], atol=1e-5, rtol=0)
    assert load_asr_model(mms_dir, [], task="deu").active == "deu"
    with pytest.raises(CheckpointError, match="no adapter.spa.safetensors"):
        load_mms_dir(mms_dir, languages=["spa"])


def test_trained_mms_task_exports_to_transformers(mms_dir, tmp_path):
    model = load_mms_dir(mms_dir)
    spa = Vocabulary.build(["hola qué tal señor"])
    params = prepare(model, "spa", spa, MethodConfig("adapters", adapter_size=ATTN_DIM, adapter_form="mms"))
    assert all(".adapter_layer." in k or k.startswith("heads.spa.") for k in params)
    perturb(params.values())
    model.eval()
    out = export_mms(model, ["spa", "deu"], tmp_path / "export")
    assert {p.name for p in out.glob("adapter.*")} == {"adapter.spa.safetensors", "adapter.deu.safetensors"}

    hf, info = Wav2Vec2ForCTC.from_pretrained(out, target_lang="spa", ignore_mismatched_sizes=True,
                                              output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    hf.eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(AUDIO).logits, _logits(model, "spa"), atol=1e-5, rtol=0)
        hf.load_adapter("deu")
        torch.testing.assert_close(hf(AUDIO).logits, _logits(model, "deu"), atol=1e-5, rtol=0)
        main = Wav2Vec2ForCTC.from_pretrained(out).eval()  # model.safetensors holds the first task
        torch.testing.assert_close(main(AUDIO).logits, _logits(model, "spa"), atol=1e-5, rtol=0)
    processor = Wav2Vec2Processor.from_pretrained(out)
    assert processor.tokenizer.target_lang == "spa" and processor.feature_extractor.do_normalize
    processor.tokenizer.set_target_lang("deu")
    assert processor.tokenizer.get_vocab() == {t: i for i, t in enumerate(VOCABS["deu"].tokens)}

    back = load_asr_model(out, [])
    assert sorted(back.heads) == ["deu", "spa"] and back.active == "spa"
    torch.testing.assert_close(_logits(back, "spa"), _logits(model, "spa"), atol=0, rtol=0)


def test_wavadapt_task_file_beside_the_languages(mms_dir, tmp_path):
    model = load_mms_dir(mms_dir)
    params = prepare(model, "spa", Vocabulary.build(["hola"]), MethodConfig("adapters", adapter_size=4))
    perturb(params.values())
    local = tmp_path / "mms"
    shutil.copytree(mms_dir, local)
    path = save_task(model.eval(), "spa", local)  # a wavadapt task file inside the MMS directory is not a language
    loaded = load_asr_model(local, [path])
    assert sorted(loaded.heads) == sorted([*VOCABS, "spa"]) and loaded.active == "spa"
    torch.testing.assert_close(_logits(loaded, "spa"), _logits(model, "spa"), atol=0, rtol=0)


@pytest.mark.parametrize("tamper, named", [
    (lambda t: {k: v for k, v in t.items() if k != "lm_head.bias"}, "missing keys: lm_head.bias"),
    (lambda t: t | {"lm_head.extra": torch.zeros(2)}, "unexpected keys: lm_head.extra"),
    (lambda t: t | {"wav2vec2.encoder.layers.0.adapter_layer.linear_1.weight": torch.zeros(4, 32)},
     r"shape mismatches: wav2vec2.encoder.layers.0.adapter_layer.linear_1.weight \(4, 32\) in the file"),
])  # fmt: skip
def test_tampered_adapter_file_is_refused_naming_it(mms_dir, tmp_path, tamper, named):
    local = tmp_path / "mms"
    shutil.copytree(mms_dir, local)
    file = local / "adapter.deu.safetensors"
    save_file(tamper(load_file(file)), file)
    with pytest.raises(CheckpointError, match=named) as e:
        load_asr_model(local, [])
    assert str(file) in str(e.value) and "'deu' adapter" in str(e.value)


def test_adapter_file_of_another_backbone_is_refused_naming_both_fingerprints(mms_dir, tmp_path):
    ours, theirs = load_mms_dir(mms_dir), load_mms_dir(_write_mms_dir(tmp_path / "theirs", seed=1))
    target = export_mms(ours, ["deu"], tmp_path / "ours-export")
    other = export_mms(theirs, ["deu"], tmp_path / "theirs-export")
    file = target / "adapter.deu.safetensors"
    shutil.copy(other / "adapter.deu.safetensors", file)  # same shapes, other base weights
    with pytest.raises(CheckpointError, match="different backbone") as e:
        load_asr_model(target, [])
    message = str(e.value)
    assert str(file) in message
    assert backbone_fingerprint(ours.backbone) in message and backbone_fingerprint(theirs.backbone) in message


def test_export_refuses_tasks_mms_cannot_hold(mms_dir):
    model = load_mms_dir(mms_dir)
    prepare(model, "spa", Vocabulary.build(["hola"]), MethodConfig("adapters", adapter_size=4))  # houlsby
    with pytest.raises(WavadaptError, match="task 'spa' has a houlsby-form adapter set: the MMS layout holds only "
                                            "tasks with one mms-form adapter set each; train one with `finetune "
                                            "--method adapters --adapter-form mms` on a pre-LN backbone"):
        export_mms(model, ["eng", "spa"], "unused")
    prepare(model, "ita", Vocabulary.build(["ciao"]), MethodConfig("adapters", adapter_size=4, adapter_form="mms"))
    with pytest.raises(WavadaptError, match="sizes"):
        export_mms(model, ["eng", "ita"], "unused")


def test_export_refuses_a_family_without_transformers_adapter_layers():
    model = CTCModel(WavLMModel(WavLMConfig(**SMALL, num_buckets=16, max_bucket_distance=32))).eval()
    prepare(model, "eng", VOCABS["eng"], MethodConfig("adapters", adapter_size=4, adapter_form="mms"))
    with pytest.raises(WavadaptError, match="WavLMForCTC cannot hold"):
        export_mms(model, ["eng"], "unused")


def test_post_ln_backbone_takes_no_mms_adapters():
    model = CTCModel(Wav2Vec2Model(Wav2Vec2Config(**{**SMALL, "do_stable_layer_norm": False})))
    with pytest.raises(WavadaptError, match="needs a pre-LN"):
        prepare(model, "eng", VOCABS["eng"], MethodConfig("adapters", adapter_size=4, adapter_form="mms"))
    assert adapter_names(model.backbone) == []


def test_finetune_in_the_mms_form_then_export_from_the_command_line(mms_dir, synth_corpus, tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["finetune", str(synth_corpus), "--language", "en", "--task", "en", "--model",
                                 str(mms_dir), "--method", "adapters", "--adapter-form", "mms", "--adapter-size",
                                 str(ATTN_DIM), "--out", str(run), "--max-updates", "2", "--valid-split", "",
                                 "--lr", "1e-2"])
    assert result.exit_code == 0, result.output
    task_file = run / "adapter.en.json"
    assert json.loads(task_file.read_text())["adapter"]["form"] == "mms"
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(task_file), "--model", str(mms_dir), "--task", "deu", "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    model = load_asr_model(mms_dir, [task_file])
    hf = Wav2Vec2ForCTC.from_pretrained(out, target_lang="deu", ignore_mismatched_sizes=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(AUDIO).logits, _logits(model, "deu"), atol=1e-5, rtol=0)
        hf.load_adapter("en")
        torch.testing.assert_close(hf(AUDIO).logits, _logits(model, "en"), atol=1e-5, rtol=0)


def test_houlsby_tasks_are_not_exported_to_mms(mms_dir, tmp_path):
    model = load_mms_dir(mms_dir)
    prepare(model, "xho", Vocabulary.build(["molo"]), MethodConfig("adapters", adapter_size=8))
    result = CliRunner().invoke(app, ["export", str(save_task(model, "xho", tmp_path)), "--model", str(mms_dir),
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "mms" in str(result.exception)
