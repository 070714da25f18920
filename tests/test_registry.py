"""The adapter registry: a directory's task files on one backbone, added and removed at run time without touching
the backbone or the other tasks; a task from another backbone refused with both fingerprints."""

import pytest
import torch
from model_probes import perturb
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.text import Vocabulary
from wavadapt.decoding.ngram import build_arpa
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.inference.registry import Registry
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.adapters import AdapterConfig, adapter_names, adapter_parameters, add_adapter
from wavadapt.model.backbone import build_backbone
from wavadapt.model.checkpoint import save_adapter, save_task, task_tensors
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import MethodConfig, prepare

AUDIO = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Task files trained on the tiny preset's weights: en, de, a language adapter es and es/asr stacked on it."""
    out = tmp_path_factory.mktemp("tasks")
    torch.manual_seed(0)
    model = CTCModel(build_backbone("tiny")).eval()
    for task, text in (("en", "the fox"), ("de", "der fuchs")):
        perturb(prepare(model, task, Vocabulary.build([text]), MethodConfig("adapters", adapter_size=16)).values(), 0.2)
        save_task(model, task, out)
    add_adapter(model.backbone, "es", AdapterConfig(size=16))
    perturb(adapter_parameters(model.backbone, "es").values(), 0.2)
    save_adapter(model.backbone, "es", out)
    params = prepare(model, "es/asr", Vocabulary.build(["el zorro"]), MethodConfig("adapters", adapter_size=8,
                                                                                   stack_on="es"))
    perturb(params.values(), 0.2)
    save_task(model, "es/asr", out)
    return out


def _logits(model, task):
    model.activate(task)
    with torch.no_grad():
        return model(AUDIO).logits


def test_a_directory_loads_in_stacking_order_and_lists_each_tasks_share(task_dir):
    files = Registry.task_files(task_dir)
    assert files.index(task_dir / "adapter.es.json") < files.index(task_dir / "adapter.es--asr.json")
    registry = Registry.load("tiny", files)
    assert registry.names == ["de", "en", "es/asr"]
    infos = {t.task: t for t in registry.tasks()}
    assert infos["es/asr"].stack == ["es", "es/asr"] and infos["en"].form == "houlsby"
    for task, info in infos.items():
        own = task_tensors(registry.model, task)
        assert info.parameters == sum(p.numel() for p in own.values()) and info.bytes == 4 * info.parameters
    backbone = sum(p.numel() for p in build_backbone("tiny").parameters())
    assert registry.backbone_bytes() == 4 * backbone


def test_tasks_come_and_go_without_touching_the_backbone_or_the_others(task_dir):
    registry = Registry.load("tiny", [task_dir / "adapter.en.json"])
    backbone = registry.model.backbone
    base = {k: v.clone() for k, v in backbone.state_dict().items() if ".adapters." not in k and ".tasks." not in k}
    en = _logits(registry.model, "en")
    assert registry.add(task_dir / "adapter.de.json") == "de"
    assert torch.equal(_logits(registry.model, "en"), en)
    de = _logits(registry.model, "de")
    registry.remove("en")
    assert registry.names == ["de"] and "en" not in adapter_names(backbone)
    assert not any(".en." in k for k in registry.model.state_dict())
    assert torch.equal(_logits(registry.model, "de"), de) and registry.model.backbone is backbone
    assert all(torch.equal(base[k], v) for k, v in backbone.state_dict().items() if k in base)
    registry.add(task_dir / "adapter.en.json")  # back again, from its file
    assert torch.equal(_logits(registry.model, "en"), en)
    with torch.no_grad():  # and a mixed batch routes each row to the sets there are now
        mixed = registry.model.forward_mixed(AUDIO, ["de", "en"]).logits
    torch.testing.assert_close(mixed[0, :, : de.shape[-1]], de[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1, :, : en.shape[-1]], en[1], atol=1e-5, rtol=0)
    with pytest.raises(WavadaptError, match="unknown task 'fr'"):
        registry.remove("fr")


def test_a_shared_language_adapter_stays_while_a_task_uses_it(task_dir):
    registry = Registry.load("tiny", Registry.task_files(task_dir))
    registry.remove("es/asr")
    assert "es" not in adapter_names(registry.model.backbone) and "es/asr" not in adapter_names(registry.model.backbone)
    registry.add(task_dir / "adapter.es.json")
    registry.add(task_dir / "adapter.es--asr.json")
    registry.remove("en")
    assert "es" in adapter_names(registry.model.backbone)


def test_a_task_of_another_backbone_is_refused_naming_both_fingerprints(task_dir, tmp_path):
    torch.manual_seed(1)
    other = CTCModel(build_backbone("tiny"))
    other.add_task("fr", Vocabulary.build(["le renard"]))
    registry = Registry.load("tiny", [])
    with pytest.raises(CheckpointError) as e:
        registry.add(save_task(other, "fr", tmp_path))
    assert str(e.value).count("sha256:") == 2 and "adapter.fr.json" in str(e.value)
    assert registry.names == []


def test_info_lists_the_tasks_a_backbone_serves(task_dir):
    result = CliRunner().invoke(app, ["info", "tiny", "--adapters", str(task_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:2] == ["es/asr", "es"] for line in lines)
    assert any(line.startswith("tasks on one backbone") for line in lines)


def test_two_runs_of_one_language_serve_side_by_side_under_their_file_names(task_dir, tmp_path):
    """Task names are baked into the tensor names; a task loads under the name its file bears (or FILE:NAME)."""
    torch.manual_seed(0)
    model = CTCModel(build_backbone("tiny")).eval()
    perturb(prepare(model, "en", Vocabulary.build(["a second fox"]), MethodConfig("adapters", adapter_size=8)).values(),
            0.3)
    second = save_task(model, "en", tmp_path / "second")  # another English run: its task is "en" too
    served = tmp_path / "served"
    served.mkdir()
    for suffix in (".json", ".safetensors"):
        (served / f"adapter.en{suffix}").write_bytes((task_dir / f"adapter.en{suffix}").read_bytes())
        (served / f"adapter.en-top1{suffix}").write_bytes(second.with_suffix(suffix).read_bytes())
    registry = Registry.load("tiny", Registry.task_files(served))
    assert registry.names == ["en", "en-top1"]
    assert torch.equal(_logits(registry.model, "en-top1"), _logits(model, "en"))
    assert torch.equal(_logits(registry.model, "en"), _logits(Registry.load("tiny", [task_dir / "adapter.en.json"])
                                                                .model, "en"))
    assert set(task_tensors(registry.model, "en-top1")) == {k.replace(".en.", ".en-top1.")
                                                             for k in task_tensors(model, "en")}

    with pytest.raises(CheckpointError) as e:
        load_asr_model("tiny", [task_dir / "adapter.en.json", second])
    assert str(e.value) == (f"{second}: the model already has a task named 'en' (from {task_dir / 'adapter.en.json'}): "
                            f"load this one under another name, {second}:NAME")
    both = load_asr_model("tiny", [task_dir / "adapter.en.json", f"{second}:en--second"])
    assert sorted(both.heads) == ["en", "en/second"] and torch.equal(_logits(both, "en/second"), _logits(model, "en"))


def test_info_and_serve_agree_on_each_tasks_language_model(task_dir, tmp_path):
    build_arpa(["der fuchs", "der hund"], 2, tmp_path / "lm.de.arpa", discount_fallback=True)
    for suffix in (".json", ".safetensors"):
        (tmp_path / f"adapter.de{suffix}").write_bytes((task_dir / f"adapter.de{suffix}").read_bytes())
    result = CliRunner().invoke(app, ["info", "tiny", "--adapters", str(tmp_path)])
    assert result.exit_code == 0, result.output
    served = Registry.load("tiny", Registry.task_files(tmp_path), decoding_dir=tmp_path)
    line = next(line for line in result.output.splitlines() if line.split()[:1] == ["de"])
    assert served.tasks()[0].lm == "lm.de.arpa" and "lm.de.arpa" in line
