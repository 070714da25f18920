"""Language identification on the frozen backbone: training changes only the identifier, whose file holds exactly
its tensors and reloads to the same scores; a padded batch scores each row as alone; the evaluation counts what it
identified."""

import json

import pytest
import torch
from cli_runner import run_cli
from safetensors import safe_open
from test_transcription import _two_task_model

from wavadapt.data.audio import read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.errors import CheckpointError
from wavadapt.evaluation.language_id import identify_corpus
from wavadapt.inference.transcription import Request, transcribe_requests
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.adapters import base_state
from wavadapt.model.checkpoint import save_backbone, save_task
from wavadapt.training.language_id import train_language_id
from wavadapt.training.loop import TrainConfig


@pytest.fixture(scope="module")
def trained(synth_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lid")
    model = load_asr_model("tiny", [])
    before = {k: v.clone() for k, v in base_state(model.backbone).items()}
    train = [u for lang in ("en", "es") for u in open_corpus(synth_corpus, "train", lang)]
    valid = [u for lang in ("en", "es") for u in open_corpus(synth_corpus, "dev", lang)]
    history = train_language_id(model, ["en", "es"], train, TrainConfig(max_updates=4, lr=1e-2,
                                max_seconds_per_batch=20, validate_every=4, progress=False), out, layer=1,
                                valid=valid)
    return model, out, before, history


def test_only_the_identifier_trains_and_its_file_holds_exactly_it(trained):
    model, out, before, history = trained
    assert history[-1]["update"] == 4 and 0 <= history[-1]["valid_accuracy"] <= 1
    after = base_state(model.backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone bit-identical
    with safe_open(out / "adapter.lid.safetensors", "pt") as f:
        assert set(f.keys()) == {"language_id.norm.weight", "language_id.norm.bias", "language_id.classifier.weight",
                                 "language_id.classifier.bias"}
    info = json.loads((out / "adapter.lid.json").read_text())
    assert info["language_id"] == {"labels": ["en", "es"], "layer": 1} and info["task"] == "lid"


def test_the_file_reloads_to_the_same_scores_and_refuses_another_backbone(trained, synth_corpus):
    model, out, _, _ = trained
    x = torch.from_numpy(read_audio(open_corpus(synth_corpus, "test", "es")[0].path))[None]
    fresh = load_asr_model("tiny", [out / "adapter.lid.json"])
    with torch.no_grad():
        torch.testing.assert_close(fresh.identify(x), model.identify(x), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="trained on a different backbone"):
        load_asr_model("base", [out / "adapter.lid.json"])


def test_a_padded_batch_scores_each_row_as_alone(trained, synth_corpus):
    model = trained[0]
    clips = [torch.from_numpy(read_audio(u.path)) for lang in ("en", "es") for u in open_corpus(synth_corpus, "test",
                                                                                                  lang)[:2]]
    waveforms = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    mask = (torch.arange(waveforms.shape[1])[None] < torch.tensor([len(c) for c in clips])[:, None]).int()
    with torch.no_grad():
        batched = model.identify(waveforms, mask)
        for i, clip in enumerate(clips):
            torch.testing.assert_close(batched[i], model.identify(clip[None])[0], atol=1e-5, rtol=0)


def test_the_evaluation_counts_each_utterance_once_by_its_language(trained, synth_corpus):
    model = trained[0]
    test = [u for lang in ("en", "es") for u in open_corpus(synth_corpus, "test", lang)]
    result = identify_corpus(model, test, max_seconds_per_batch=10)
    rows = [sum(row) for row in result.confusion]
    assert rows == [sum(u.language == lang for u in test) for lang in ("en", "es")] and result.skipped == 0
    with torch.no_grad():
        alone = [model.identify(torch.from_numpy(read_audio(u.path))[None]).argmax().item() for u in test]
    right = sum(a == ["en", "es"].index(u.language) for a, u in zip(alone, test, strict=True))
    assert result.accuracy == right / len(test)


def test_the_commands_train_evaluate_and_route_by_language(synth_corpus, tmp_path, capsys):
    """finetune --objective lid, evaluate --task lid, then transcribe --task auto: each file's text is what the
    task it was routed to gives it, and its row names that task and the language found."""
    model = _two_task_model("layer")
    backbone = save_backbone(model.backbone, tmp_path / "backbone")
    tasks = [save_task(model, name, tmp_path / "tasks") for name in ("en", "es")]
    code, out, err = run_cli(capsys, "finetune", synth_corpus, "--language", "en,es", "--objective", "lid", "--out",
                             tmp_path / "lid", "--model", backbone, "--max-updates", "3", "--lid-layer", "2",
                             "--max-seconds-per-batch", "20", "--no-progress")
    assert code == 0, err
    assert out.strip().startswith("update 3, loss") and "validation accuracy" in out
    lid = tmp_path / "lid" / "adapter.lid.json"
    code, out, err = run_cli(capsys, "evaluate", synth_corpus, "--language", "en,es", "--model", backbone,
                             "--adapter", lid, "--task", "lid", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["labels"] == ["en", "es"] and result["utterances"] == sum(map(sum, result["confusion"]))
    files = [u.path for lang in ("en", "es") for u in open_corpus(synth_corpus, "test", lang)[:2]]
    code, out, err = run_cli(capsys, "transcribe", *files, "--model", backbone, "--adapter", tasks[0], "--adapter",
                             tasks[1], "--adapter", lid, "--task", "auto", "--lid-threshold", "0", "--format", "jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(r["task"] in ("en", "es") and r["language"] == r["task"] and 0 < r["language_probability"] <= 1
               for r in rows)
    loaded = load_asr_model(backbone, tasks)
    for path, row in zip(files, rows, strict=True):
        [alone] = transcribe_requests(loaded, [Request(path, row["task"])])
        assert row["text"] == alone.text
    code, out, err = run_cli(capsys, "transcribe", files[0], "--model", backbone, "--adapter", tasks[0],
                             "--adapter", tasks[1], "--task", "auto")
    assert code == 1 and err.strip() == ("error: task auto needs a language identifier: load its file "
                                         "(adapter.lid.json, from `wavadapt finetune --objective lid`)")
