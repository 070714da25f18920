"""evaluate-continual: the forgetting matrix repeats the first language bit for bit under cwav2vec 2.0 and
drifts under warm-start; the efficiency table reads the runs' logs."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.corpora import open_corpus
from wavadapt.errors import WavadaptError
from wavadapt.experiments.forgetting import (
    METRICS,
    ProbeConfig,
    Run,
    checkpoint_sequences,
    continual_summaries,
    evaluate_continual,
    finetune_language,
    language_fingerprint,
    probe,
    read_run,
    seconds_at,
)
from wavadapt.model.pretraining import load_pretraining
from wavadapt.training.continual import ContinualConfig, prepare_continual
from wavadapt.training.finetune import AugmentConfig
from wavadapt.training.pretrain import build_model, pretrain, recipe

FIRST_UPDATES, SECOND_UPDATES, EVERY = 2, 4, 2


def train_config(updates, **kwargs):
    return recipe("tiny", max_updates=updates, progress=False, max_seconds_per_batch=8, log_every=1, **kwargs).train


@pytest.fixture(scope="module")
def runs(synth_corpus, tmp_path_factory):
    """pt-en (English), then cw-es (cwav2vec 2.0) and warm-es (warm-start) on Spanish with snapshots."""
    root = tmp_path_factory.mktemp("runs")
    pretrain(build_model("tiny", "en", "tiny"), "en", open_corpus(synth_corpus, "pretrain", "en"),
             train_config(FIRST_UPDATES), root / "pt-en", crop_seconds=4.0)
    for name, method in (("cw-es", "cwav2vec"), ("warm-es", "warm-start")):
        model = load_pretraining(root / "pt-en").train()
        torch.manual_seed(0)
        trainable, regularizer = prepare_continual(model, "es", ContinualConfig(method, adapter_size=16))
        pretrain(model, "es", open_corpus(synth_corpus, "pretrain", "es"),
                 train_config(SECOND_UPDATES, checkpoint_every=EVERY, validate_every=EVERY), root / name,
                 trainable=trainable, crop_seconds=4.0, regularizer=regularizer, keep_snapshots=True,
                 valid=open_corpus(synth_corpus, "dev", "es"))
    return root


def probe_config(corpus):
    return ProbeConfig(corpus, max_updates=2, lr=1e-3, adapter_size=16, max_seconds_per_batch=20,
                       augment=AugmentConfig(mask_time_prob=0.2, mask_feature_prob=0.1))


def test_forgetting_matrix_and_efficiency(runs, synth_corpus, tmp_path):
    dirs = [runs / "pt-en", runs / "cw-es", runs / "warm-es"]
    report = evaluate_continual(dirs, probe_config(synth_corpus), tmp_path, target_loss=100.0)

    rows = {(r["method"], r["position"]): r for r in report.forgetting}
    positions = ["en@2", "es@2", "es@4"]  # the snapshot at the end is the end itself
    assert list(rows) == [(m, p) for m in ("cw-es", "warm-es") for p in positions]
    assert [rows["cw-es", p]["step"] for p in positions] == [2, 4, 6]
    assert report.languages == ["en", "es"]
    assert "wer_es" not in rows["cw-es", "en@2"] and all(f"{m}_es" in rows["cw-es", "es@2"] for m in METRICS)

    start = rows["cw-es", "en@2"]
    for p in positions[1:]:  # nothing English uses moved: every English score is exactly the same
        assert all(rows["cw-es", p][f"{m}_en"] == start[f"{m}_en"] for m in METRICS)
        assert rows["warm-es", p]["ssl_loss_en"] != start["ssl_loss_en"]
        assert rows["warm-es", p]["ctc_loss_en"] != start["ctc_loss_en"]
    # ... because nothing English reads moved (so English was probed once for cw-es): probing it again at the last
    # cwav2vec checkpoint gives the first task's scores exactly.
    english = {lang: language_fingerprint(load_pretraining(runs / "cw-es"), lang) for lang in ("en", "es")}
    assert english["en"] == language_fingerprint(load_pretraining(runs / "pt-en"), "en") != english["es"]
    assert language_fingerprint(load_pretraining(runs / "warm-es"), "en") != english["en"]
    again = probe(runs / "cw-es", "en", probe_config(synth_corpus), tmp_path / "again")
    assert again == {k: v for k, v in start.items() if k.endswith("_en")}
    assert rows["warm-es", "en@2"] | {"method": "cw-es"} == start  # the shared first-task end, probed once

    timing = {r["method"]: r for r in report.efficiency}
    assert list(timing) == ["cw-es", "warm-es"]
    cw, warm = timing["cw-es"], timing["warm-es"]
    assert cw["trainable_parameters"] < warm["trainable_parameters"]
    assert cw["total_parameters"] == cw["trainable_parameters"] + cw["frozen_parameters"] > warm["total_parameters"]
    assert all(r["median_update_seconds"] > 0 and 0 < r["seconds_to_target"] <= r["train_seconds"]
               for r in report.efficiency)
    assert max(r["relative_update_time"] for r in report.efficiency) == 1.0

    with (tmp_path / "forgetting.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {"wer_en", "cer_es", "ssl_loss_en", "method", "task", "update"} <= set(table[0])
    assert json.loads((tmp_path / "forgetting.json").read_text())["rows"] == report.forgetting
    assert json.loads((tmp_path / "efficiency.json").read_text())["rows"] == report.efficiency
    assert (tmp_path / "efficiency.csv").is_file()
    assert "en WER" in report.summary() and "cw-es" in report.summary()

    # CL-MASR's summaries at each method's last checkpoint; FWT's reference fine-tunes pt-en on Spanish directly.
    summaries = {r["method"]: r for r in report.summaries}
    reference, _ = finetune_language(runs / "pt-en", "es", probe_config(synth_corpus), tmp_path / "ref",
                                     reference=True)
    for method in ("cw-es", "warm-es"):
        last, s = rows[method, "es@4"], summaries[method]
        assert s["languages"] == ["en", "es"]
        for m, ref in (("wer", reference.wer), ("cer", reference.cer)):
            assert s[f"average_{m}"] == pytest.approx((last[f"{m}_en"] + last[f"{m}_es"]) / 2)
            assert s[f"bwt_{m}"] == pytest.approx(start[f"{m}_en"] - last[f"{m}_en"])
            assert s[f"reference_{m}"] == ref and s[f"fwt_{m}"] == pytest.approx(ref - last[f"{m}_es"])
    assert summaries["cw-es"]["bwt_wer"] == summaries["cw-es"]["bwt_cer"] == 0.0  # no forgetting, exactly
    assert json.loads((tmp_path / "continual_learning.json").read_text())["rows"] == report.summaries
    assert "BWT" in report.summary()

    # The command line, English only on one method: the same seeded scores, JSON on stdout.
    result = CliRunner().invoke(app, ["evaluate-continual", str(runs / "pt-en"), str(runs / "cw-es"), "--data",
                                      str(synth_corpus), "--out", str(tmp_path / "cli"), "--language", "en",
                                      "--max-updates", "2", "--lr", "1e-3", "--adapter-size", "16",
                                      "--max-seconds-per-batch", "20", "--mask-time-prob", "0.2",
                                      "--mask-feature-prob", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["languages"] == ["en"]
    assert [r["ssl_loss_en"] for r in printed["forgetting"]] == [start["ssl_loss_en"]] * 3
    assert [r["wer_en"] for r in printed["forgetting"]] == [start["wer_en"]] * 3


def test_refusals(runs, synth_corpus, tmp_path):
    config = probe_config(synth_corpus)
    with pytest.raises(WavadaptError, match="has not learnt 'es'"):
        finetune_language(runs / "pt-en", "es", config, tmp_path)
    with pytest.raises(WavadaptError, match="no given run has learnt fr"):
        evaluate_continual([runs / "pt-en"], config, tmp_path, languages=["fr"])
    first, other, second = (Run(tmp_path / name, tasks, tasks[-1], {}, [{"update": 1.0}])
                            for name, tasks in (("a", ["en"]), ("b", ["en"]), ("c", ["en", "es"])))
    with pytest.raises(WavadaptError, match="several given runs"):
        checkpoint_sequences([first, other, second])
    with pytest.raises(WavadaptError, match="distinct names"):
        checkpoint_sequences([first, first])
    with pytest.raises(WavadaptError, match="not a finished pre-training run"):
        read_run(tmp_path)


def test_continual_summaries_by_hand():
    rows = [{"method": "m", "task": "en", "wer_en": 0.5, "cer_en": 0.2},
            {"method": "m", "task": "es", "wer_en": 0.55, "wer_es": 0.6, "cer_en": 0.25, "cer_es": 0.3},
            {"method": "m", "task": "es", "wer_en": 0.6, "wer_es": 0.4, "cer_en": 0.3, "cer_es": 0.1},
            {"method": "n", "task": "en", "wer_en": 0.5, "cer_en": 0.2}]
    m, n = continual_summaries(rows, {"es": {"wer": 0.5, "cer": 0.2}})
    assert m == {"method": "m", "languages": ["en", "es"],
                 "average_wer": pytest.approx(0.5), "bwt_wer": pytest.approx(-0.1), "fwt_wer": pytest.approx(0.1),
                 "reference_wer": 0.5, "bwt_wer_interval": None,  # no per-utterance counts in these rows
                 "average_cer": pytest.approx(0.2), "bwt_cer": pytest.approx(-0.1), "fwt_cer": pytest.approx(0.1),
                 "reference_cer": 0.2, "bwt_cer_interval": None}
    assert n == {"method": "n", "languages": ["en"], "average_wer": 0.5, "bwt_wer": None, "fwt_wer": None,
                 "reference_wer": None, "average_cer": 0.2, "bwt_cer": None, "fwt_cer": None, "reference_cer": None,
                 "bwt_wer_interval": None, "bwt_cer_interval": None}


def test_training_time_from_logged_windows():
    # Windows of 2 updates at 1 s, then 2 at 2 s; the validation at update 3 falls inside the second.
    log = [{"update": 2, "update_seconds": 1.0}, {"update": 3, "valid_loss": 5.0},
           {"update": 4, "update_seconds": 2.0, "valid_loss": 3.0}]
    assert [seconds_at(log, u) for u in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 6.0, None]
