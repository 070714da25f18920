"""Automatic routing: with identification replaced by the true languages, ``auto`` rows get exactly what their
tasks give them (in one shared forward when the adapters start above the identifier's layer, in two passes
otherwise); a batch of auto rows, combined or not, equals each row alone; EMEA's weights stay distributions."""

import json

import openai
import pytest
import torch
import websocket
from test_transcription import _two_task_model
from torch import nn

from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.inference.registry import Registry, format_tasks
from wavadapt.inference.server import ServerConfig, create_app, serving
from wavadapt.model import auto_routing
from wavadapt.model.auto_routing import AutoConfig, route
from wavadapt.model.backbone import build_backbone
from wavadapt.model.combination import forward_combined
from wavadapt.model.ctc import CTCModel
from wavadapt.model.language_id import LanguageId
from wavadapt.training.methods import MethodConfig, prepare

TOLERANCE = {"atol": 1e-5, "rtol": 0}
TRUTH = ["es", "en", "es"]


class Oracle(nn.Module):
    """An identifier that knows each row's language (TRUTH), read from its layer like the real one."""

    def __init__(self, layer: int):
        super().__init__()
        self.labels, self.layer, self.calls = ["en", "es"], layer, 0

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([[9.0, 0.0] if lang == "en" else [0.0, 9.0] for lang in TRUTH])


def top_model() -> CTCModel:
    """Adapters in the top two of four layers: an identifier at layer 2 shares the two below."""
    torch.manual_seed(0)
    model = CTCModel(build_backbone("tiny")).eval()
    for task, text in (("en", "the quick brown fox"), ("es", "el zorro marrón")):
        params = prepare(model, task, Vocabulary.build([text]), MethodConfig("top-n-adapters", top_n=2,
                                                                             adapter_size=16))
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(scope="module")
def audio():
    torch.manual_seed(1)
    return torch.randn(3, 12000) * 0.1


def each_task(model: CTCModel, audio: torch.Tensor, tasks: list[str]) -> torch.Tensor:
    """Each row run with its task alone, as log-probabilities in the batch's merged vocabulary."""
    with torch.no_grad():
        output, _ = forward_combined(model, audio, [[t] for t in tasks], torch.ones(len(tasks), 1))
    return output.logits


@pytest.mark.parametrize("build,shared", [(top_model, True), (lambda: _two_task_model("layer"), False)])
def test_auto_with_the_true_languages_is_each_row_on_its_task(audio, build, shared, monkeypatch):
    model = build()
    model.language_id = Oracle(layer=2)
    passes = []
    monkeypatch.setattr(model, "identify", lambda *a, **k: passes.append(1) or CTCModel.identify(model, *a, **k))
    with torch.no_grad():
        output, vocabulary, routes = route(model, audio, ["auto"] * 3)
    assert [r.task for r in routes] == TRUTH and all(r.probability > 0.99 for r in routes)
    assert bool(passes) != shared and model.language_id.calls == 1  # identified once, in the batch's own forward
    expected = each_task(model, audio, TRUTH)
    torch.testing.assert_close(output.logits, expected, **TOLERANCE)
    plain = [vocabulary.tokens.index(t) for t in model.vocabularies["es"].tokens]
    model.activate("es")
    with torch.no_grad():
        alone = model(audio[:1]).logits.log_softmax(-1)
    torch.testing.assert_close(output.logits[0][:, plain], alone[0], **TOLERANCE)


@pytest.mark.parametrize("combine", ["uniform", "lid", "entropy"])
def test_a_batch_of_auto_rows_is_each_row_alone(audio, combine):
    model = top_model()
    torch.manual_seed(2)
    model.language_id = LanguageId(model.hidden_size, ["en", "es", "it"], layer=2).eval()
    config = AutoConfig(combine=combine, threshold=0.4)
    requests = ["auto", "en+es", "es"]
    with torch.no_grad():
        together, vocabulary, routes = route(model, audio, requests, config)
        for b in range(3):
            alone, alone_vocabulary, (one,) = route(model, audio[b : b + 1], [requests[b]], config)
            assert one.task == routes[b].task and one.weights == pytest.approx(routes[b].weights, abs=1e-5)
            columns = [vocabulary.tokens.index(t) for t in alone_vocabulary.tokens]
            # batched and alone differ by float rounding in log-probabilities of size ~5
            torch.testing.assert_close(together.logits[b][:, columns], alone.logits[0], atol=1e-5, rtol=1e-5)
    assert routes[1].components == ("en", "es") and sum(routes[1].weights) == pytest.approx(1.0)
    if combine == "uniform":
        assert routes[1].weights == (0.5, 0.5)
    if combine == "entropy":  # moved off uniform by the step
        assert routes[1].weights != pytest.approx((0.5, 0.5), abs=1e-4)


def test_unroutable_requests_are_refused_by_name(audio):
    model = top_model()
    with pytest.raises(WavadaptError, match="task auto needs a language identifier"):
        route(model, audio, ["auto"] * 3)
    model.language_id = LanguageId(model.hidden_size, ["de", "fr"], layer=2)
    with pytest.raises(WavadaptError, match=r"none of the identifier's languages \(de, fr\) has a task"):
        route(model, audio, ["auto"] * 3)
    with pytest.raises(WavadaptError, match="unknown task"):
        route(model, audio, ["en+de"] * 3)
    assert auto_routing.task_of_language(model, "es") == "es"


def test_the_server_routes_model_auto_and_combinations(synth_corpus):
    """The official client asks for model=auto: each answer names the language and task it was routed to and
    carries that task's own transcript; /v1/models lists auto; a combination answers; a live stream is refused."""
    model = _two_task_model("layer")
    torch.manual_seed(3)
    model.language_id = LanguageId(model.hidden_size, ["en", "es"], layer=2).eval()
    files = [u.path for lang in ("en", "es") for u in open_corpus(synth_corpus, "test", lang)[:2]]
    registry = Registry(model)
    assert format_tasks(registry).splitlines()[-1].split()[:4] == ["auto", "identifier,", "layer", "2"]
    with serving(create_app(registry, ServerConfig(auto=AutoConfig(threshold=0.0)))) as url:
        client = openai.OpenAI(api_key="none", base_url=f"{url}/v1", max_retries=0, timeout=60)
        assert "auto" in [m.id for m in client.models.list().data]
        for path in files:
            answer = client.audio.transcriptions.create(model="auto", file=path.open("rb"),
                                                        response_format="verbose_json")
            extra = answer.model_extra
            assert answer.language in ("en", "es") and extra["model"] == answer.language
            assert 0.5 <= extra["language_probability"] <= 1
            alone = client.audio.transcriptions.create(model=answer.language, file=path.open("rb"))
            assert answer.text == alone.text
        combined = client.audio.transcriptions.create(model="en+es", file=files[0].open("rb"))
        assert isinstance(combined.text, str)
        live = websocket.create_connection(url.replace("http", "ws") + "/v1/stream?model=auto", timeout=60)
        try:
            refusal = json.loads(live.recv())
        finally:
            live.close()
        assert refusal["code"] == "invalid_model" and "routes whole files" in refusal["message"]
