"""report: a fake experiment directory in the writers' own formats becomes report.md + valid PNGs; missing parts
become notes."""

import csv
import json
from dataclasses import asdict

import numpy as np
import pytest
from cli_runner import run_cli
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.evaluation.bootstrap import interval
from wavadapt.evaluation.corpus import EvalResult, Scores
from wavadapt.experiments.accounting import Account
from wavadapt.experiments.forgetting import _write_csv, continual_summaries
from wavadapt.experiments.report import line_figure, updates_to_target, write_report
from wavadapt.training.loop import TrainConfig
from wavadapt.training.methods import MethodConfig

# The Trainer's log.csv columns (training/loop.py): a training row, then the validation metrics when validated.
LOG_COLUMNS = ["update", "loss", "grad_norm", "lr", "items", "audio_seconds", "audio_seconds_per_second",
               "update_seconds", "skipped_updates", "skipped_files", "skipped_batches", "valid_wer", "valid_cer"]
PNGS = ["finetune_error_rates", "top_n", "valid_cer", "continual_loss", "forgetting_wer_en", "forgetting_cer_en",
        "forgetting_ssl_loss_en", "forgetting_wer_es", "forgetting_cer_es", "forgetting_ssl_loss_es", "update_time",
        "continual_parameters"]


def write_log(path, cers):
    """log.csv rows every 10 updates; a CER of None leaves the validation cells blank, as _Logs does."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, LOG_COLUMNS)
        writer.writeheader()
        for i, cer in enumerate(cers, 1):
            valid = {} if cer is None else {"valid_wer": min(1.0, 2 * cer), "valid_cer": cer}
            writer.writerow({"update": 10 * i, "loss": 3.0 / i, "grad_norm": 1.0, "lr": 1e-4, "items": 8,
                             "audio_seconds": 60.0, "audio_seconds_per_second": 30.0, "update_seconds": 0.5,
                             "skipped_updates": 0, "skipped_files": 0, "skipped_batches": 0, **valid})


def edits(rate: float, n: int = 10) -> dict[str, list[int]]:
    """Per-utterance counts (word edits, 10 words, character edits, 30 characters) of ``n`` test utterances whose
    corpus WER is ``rate`` (and CER ``rate`` / 3), the edits spread unevenly as real errors are."""
    total = round(rate * n * 10)
    weights = np.arange(1, n + 1)
    per = np.floor(total * weights / weights.sum()).astype(int)
    per[-1] += total - per.sum()
    return {f"u{i}": [int(e), 10, int(e), 30] for i, e in enumerate(per)}


def counted(wer: float, greedy_wer: float | None = None, **fields) -> EvalResult:
    """An EvalResult of :func:`edits`, with its bootstrap intervals, as evaluate writes it."""
    counts, greedy = edits(wer), greedy_wer is not None and edits(greedy_wer) or None
    bounds = {"wer_interval": interval(list(counts.values()), "wer"), "cer_interval": interval(list(counts.values()),
                                                                                               "cer")}
    rates = (wer, wer / 3, 10, 30.0) + ((greedy_wer, greedy_wer / 3) if greedy else (None, None))
    if greedy:
        bounds |= {f"greedy_{m}_interval": interval(list(greedy.values()), m) for m in ("wer", "cer")}
    language = fields.pop("task", "en")
    return EvalResult(*rates, **bounds, task=language, languages={language: Scores(*rates, **bounds)}, counts=counts,
                      greedy_counts=greedy, **fields)


def span(rate: float, metric: str) -> str:
    """The report's interval text of :func:`edits` at ``rate``, computed here from the counts."""
    low, high = interval(list(edits(rate).values()), metric)
    return f"{100 * low:.1f}-{100 * high:.1f}"


def finetune_run(root, lang, name, method, cers=(), wer=None, **extra):
    run = root / "finetune" / lang / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"task": lang, "method": asdict(method),
                                              "train": asdict(TrainConfig(extra=extra))}, default=str))
    write_log(run / "log.csv", cers)
    if wer is not None:
        (run / "eval.json").write_text(json.dumps(counted(wer, task=lang, elapsed=2.0).to_dict()))


def account(method, top_n, trainable):
    return Account(method, top_n, 256, "houlsby", 12, 32, "Wav2Vec2Model", 95_000_000, trainable, {}).to_dict()


@pytest.fixture
def run_dir(tmp_path):
    root = tmp_path / "exp"
    root.mkdir()
    # The corpus: synthetic English (synth's corpus.json) and real Spanish (prepare's prepare.json).
    (root / "corpus" / "es").mkdir(parents=True)
    (root / "corpus" / "corpus.json").write_text(json.dumps({"languages": {"en": {"layout": "librispeech", "splits": {
        "train": {"utterances": 40, "seconds": 600.0}, "test": {"utterances": 12, "seconds": 60.0}}}}}))
    (root / "corpus" / "es" / "prepare.json").write_text(json.dumps({
        "corpus": "fillets-ng", "license": "GPL-2", "packages": {"fillets-ng-data-es": "1.0"}, "language": "es",
        "splits": {"train": {"utterances": 900, "seconds": 3000.0}, "test": {"utterances": 160, "seconds": 540.0}}}))
    (root / "params.json").write_text(json.dumps({"accounts": [
        account("full", None, 90_000_000), account("adapters", None, 9_500_000),
        account("top-n-adapters", 2, 1_000_000)]}))
    finetune_run(root, "en", "adapters", MethodConfig("adapters"), [0.9, 0.6, 0.4, 0.3], wer=0.20)
    finetune_run(root, "en", "full", MethodConfig("full"), [0.9, None, 0.8, 0.55, 0.45], wer=0.18)
    for method, n, wer in (("top-n-adapters", 2, 0.5), ("top-n-adapters", 4, 0.3), ("top-n-full", 2, 0.4)):
        finetune_run(root, "en", f"{method}-{n}", MethodConfig(method, top_n=n), [0.7], wer=wer)
    finetune_run(root, "en", "full-scratch", MethodConfig("full"), [0.95], wer=0.9, from_scratch=True)
    finetune_run(root, "es", "adapters", MethodConfig("adapters"), [None, None], wer=0.25)
    finetune_run(root, "es", "unevaluated", MethodConfig("full"), [0.95])
    cont = root / "continual" / "cw-es"
    cont.mkdir(parents=True)
    (cont / "run.json").write_text(json.dumps({"task": "es", "train": asdict(TrainConfig(
        extra={"continual_method": "cwav2vec", "l2_weight": 0.0, "adapter_size": 64}))}, default=str))
    write_log(cont / "log.csv", [None, None, None])
    evaluation = root / "evaluate-continual"
    evaluation.mkdir()
    forgetting = [{"method": "pt-en", "task": "en", "update": 100, "position": "en@100", "step": 100,
                   "wer_en": 0.3, "cer_en": 0.1, "ctc_loss_en": 1.0, "ssl_loss_en": 2.5}]
    for method, drift in (("cw-es", 0.0), ("warm-es", 0.2)):
        forgetting += [{**forgetting[0], "method": method},
                       {"method": method, "task": "es", "update": 50, "position": "es@50", "step": 150,
                        "wer_en": 0.3 + drift, "cer_en": 0.1 + drift, "ctc_loss_en": 1.0, "ssl_loss_en": 2.5 + drift,
                        "wer_es": 0.4, "cer_es": 0.15, "ctc_loss_es": 1.2, "ssl_loss_es": 3.0}]
    _write_csv(evaluation / "forgetting.csv", forgetting)  # the CSV reader path; efficiency takes the JSON one
    references = {"es": {"wer": 0.45, "cer": 0.2}}
    (evaluation / "continual_learning.json").write_text(json.dumps({"rows": continual_summaries(forgetting,
                                                                                                references)}))
    efficiency = [{"method": m, "task": "es", "updates": 50, "median_update_seconds": s, "train_seconds": 50 * s,
                   "target_loss": None, "seconds_to_target": None, "total_parameters": 96_000_000,
                   "trainable_parameters": t, "frozen_parameters": 96_000_000 - t, "relative_update_time": s / 0.8}
                  for m, s, t in (("cw-es", 0.5, 3_000_000), ("warm-es", 0.8, 95_000_000))]
    (evaluation / "efficiency.json").write_text(json.dumps({"target_loss": None, "notes": [], "rows": efficiency}))
    return root


def test_updates_to_target():
    log = [{"update": 10.0, "loss": 1.0}, {"update": 20.0, "valid_cer": 0.6}, {"update": 30.0, "valid_cer": 0.5}]
    assert updates_to_target(log, 0.5) == 30
    assert updates_to_target(log, 0.4) is None


def test_full_report(run_dir, tmp_path):
    report = write_report(run_dir, tmp_path / "out", target_cer=0.5)
    md = (tmp_path / "out" / "report.md").read_text()
    assert report.notes == []
    assert sorted(p.stem for p in report.plots) == sorted(PNGS)
    for name in PNGS:
        data = (tmp_path / "out" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        assert f"]({name}.png)" in md
    assert "| top-n-adapters | 2 | 95,000,000 | 1,000,000 | 94,000,000 | 1.05 |" in md
    # each rate with its test size and 95% bootstrap interval over the utterances
    assert f"| adapters | 10 | 20.00% ({span(0.2, 'wer')}) | 6.67% ({span(0.2, 'cer')}) | 10 | 25.00% " \
           f"({span(0.25, 'wer')}) | 8.33% ({span(0.25, 'cer')}) |" in md
    assert f"| full | 10 | 18.00% ({span(0.18, 'wer')}) | 6.00% ({span(0.18, 'cer')}) | - | - | - |" in md  # no es eval
    assert f"| full from scratch | 10 | 90.00% ({span(0.9, 'wer')}) | 30.00% ({span(0.9, 'cer')}) | - | - | - |" in md
    # The first logged update with valid CER <= 0.5; blank validation cells are skipped.
    assert "| en | adapters | adapters | 30 |" in md
    assert "| en | full | full | 50 |" in md
    assert "| en | top-n-full N=2 | top-n-full-2 | not reached (last update 10) |" in md
    assert "| warm-es | es@50 | 150 | 50.00% | 30.00% | 2.700 | 40.00% | 15.00% | 3.000 |" in md
    assert "| cw-es | es | 50 | 0.500 | 25.0 | - | 96,000,000 | 3,000,000 | 93,000,000 |" in md
    assert "| cw-es | en, es | 35.00% | +0.00 | +5.00 | 45.00% | 12.50% | +0.00 | +5.00 | 20.00% |" in md
    assert "| warm-es | en, es | 45.00% | -20.00 | +5.00 | 45.00% | 22.50% | -20.00 | +5.00 | 20.00% |" in md
    assert "| pt-en | en | 30.00% | - | - | - | 10.00% | - | - | - |" in md
    # The opening summary: plain sentences from the numbers above.
    summary = md.split("## Summary")[1].split("\n## ")[0]
    # a difference is stated only where its paired interval leaves out 0
    assert "`adapters` trains 10.0% of the parameters and reaches 6.7% CER, 1.11x full fine-tuning's; against full " \
        "fine-tuning: +0.7 points (95% interval " in summary and "): within noise (the paper" in summary
    assert "`top-n-adapters N=2` trains 1.1% of the parameters and reaches 16.7% CER, 2.78x full fine-tuning's; " \
        "against full fine-tuning: +10.7 points" in summary
    assert summary.count("beyond the test set's noise") == 3  # scratch, N=2 and N=4 against full
    assert "Pre-training helps: full fine-tuning of the pre-trained model reaches 6.0% test CER (en, greedy, 10 " \
        "utterances) against 30.0% from scratch with the same architecture and updates; -24.0 points" in summary
    assert "`warm-es`: backward transfer -20.00 CER points (-20.00 WER) on the earlier language(s) (forgetting), " \
        "forward transfer +5.00 CER points (+5.00 WER) on the new one." in summary
    assert "`cw-es`: the en self-supervised loss goes from 2.5000 to 2.5000 over the new language's training " \
        "(unchanged: nothing it uses moved)." in summary
    assert "`warm-es`: the en self-supervised loss goes from 2.5000 to 2.7000 over the new language's training." \
        in summary
    assert md.index("## Summary") < md.index("## Data") < md.index("## Parameters per method")
    assert "| en | synthetic speech | espeak-ng voices reading Debian's fortune sentences | - | 40 (10.0 min) | - | " \
        "12 (1.0 min) |" in md
    assert "| es | **real speech** | fillets-ng recordings (fillets-ng-data-es 1.0; GPL-2) | - | 900 (50.0 min) " \
        "| - | 160 (9.0 min) |" in md
    assert summary.lstrip().startswith("- Data: en: synthetic speech (espeak-ng voices reading Debian's fortune "
                                       "sentences), test split 12 utterances; es: real speech (fillets-ng recordings)"
                                       ", test split 160 utterances.")
    assert ["es", "full", "unevaluated", "-", "-", "-", "-", "-"] in [line.split()
                                                                     for line in report.summary.splitlines()]
    assert "Decoded: greedy." in md and "WER beam" not in md


def test_beam_search_results_show_greedy_beside(tmp_path):
    for name, wer, greedy_wer in (("full", 0.3, 0.5), ("adapters", 0.45, 0.6)):
        run = tmp_path / "exp" / "finetune" / "en" / name
        finetune_run(tmp_path / "exp", "en", name, MethodConfig(name))
        result = counted(wer, greedy_wer, decoder="beam 50 + en.arpa")
        (run / "eval.json").write_text(json.dumps(result.to_dict()))
    report = write_report(tmp_path / "exp")
    md = (tmp_path / "exp" / "report" / "report.md").read_text()
    assert "Decoded: beam 50 + en.arpa (greedy: the same logits' best path)." in md
    assert "| method | en n | en WER greedy | en WER beam | en CER greedy | en CER beam |" in md
    assert f"| full | 10 | 50.00% ({span(0.5, 'wer')}) | 30.00% ({span(0.3, 'wer')}) | 16.67% ({span(0.5, 'cer')}) | " \
           f"10.00% ({span(0.3, 'cer')}) |" in md
    # Models compare by greedy CER (the LM rewrites words); the summary gives the LM's WER change per method.
    assert "`adapters` reaches 20.0% CER, 1.20x full fine-tuning's; against full fine-tuning: +3.3 points" in md
    assert "changes test WER from greedy decoding's as follows: `adapters` 60.0% -> 45.0%, -15.0 points (95% " \
           "interval" in md and "; `full` 50.0% -> 30.0%, -20.0 points" in md
    assert ["en", "adapters", "adapters", "45.00%", "15.00%", "60.00%", "20.00%", "-"] in [
        line.split() for line in report.summary.splitlines()]


def test_missing_parts_become_notes(tmp_path):
    (tmp_path / "exp" / "finetune").mkdir(parents=True)
    report = write_report(tmp_path / "exp")
    md = (tmp_path / "exp" / "report" / "report.md").read_text()
    assert report.plots == [] and len(report.notes) == 9
    assert md.count("_Skipped: ") == 9 and "no params.json" in md and "no corpus.json or prepared corpus" in md
    assert "no fine-tuning runs" in report.summary


def test_a_folder_that_holds_no_experiment_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an experiment")
    code, out, err = run_cli(capsys, "report", tmp_path)
    assert code == 1 and out == "" and not (tmp_path / "report").exists()
    assert err == (f"error: {tmp_path}: no experiment here (none of experiment.json, corpus, params.json, finetune, "
                   "language-id, continual, evaluate-continual): give the folder `wavadapt run` or `wavadapt demo` "
                   "wrote\n")


def test_cli(run_dir, tmp_path):
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "cli"), "--target-cer", "0.4"])
    assert result.exit_code == 0, result.output
    assert "updates to target" in result.output and (tmp_path / "cli" / "report.md").is_file()
    assert "| en | full | full | not reached (last update 50) |" in (tmp_path / "cli" / "report.md").read_text()


def test_line_figure_labels():
    fig = line_figure("WER vs N", "N", "WER (%)", {"top-n-adapters (en)": ([2, 4], [50, 30]), "b": ([1], [2])})
    ax = fig.axes[0]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("WER vs N", "N", "WER (%)")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["top-n-adapters (en)", "b"]
    assert list(ax.lines[0].get_xdata()) == [2, 4]


def test_backward_transfer_within_noise_is_neither_forgetting_nor_a_gain(tmp_path):
    """The demo's multihead-l2 once read as "a gain" on one word of 10 test utterances."""
    rows = [{"method": "mh-l2", "task": "en", "update": 100, "position": "en@100", "step": 100, "wer_en": 0.3,
             "cer_en": 0.1, "counts_en": edits(0.3)},
            {"method": "mh-l2", "task": "es", "update": 50, "position": "es@50", "step": 150, "wer_en": 0.29,
             "cer_en": 0.29 / 3, "counts_en": edits(0.29), "wer_es": 0.4, "cer_es": 0.15}]
    rows += [{**row, "method": "warm", "wer_en": 0.6, "cer_en": 0.2, "counts_en": edits(0.6)} if row["task"] == "es"
             else {**row, "method": "warm"} for row in rows]
    evaluation = tmp_path / "exp" / "evaluate-continual"
    evaluation.mkdir(parents=True)
    summaries = {r["method"]: r for r in continual_summaries(rows, {})}
    low, high = summaries["mh-l2"]["bwt_cer_interval"]
    assert low <= 0 <= high and summaries["mh-l2"]["bwt_cer"] > 0  # one edit in one utterance
    assert summaries["warm"]["bwt_cer_interval"][1] < 0
    (evaluation / "continual_learning.json").write_text(json.dumps({"rows": list(summaries.values())}))
    write_report(tmp_path / "exp")
    summary = (tmp_path / "exp" / "report" / "report.md").read_text().split("## Summary")[1].split("\n## ")[0]
    assert "`mh-l2`: backward transfer +0.33 CER points, 95% interval " in summary
    assert "on the earlier language(s) (within noise)" in summary
    assert "`warm`: backward transfer -10.00 CER points, 95% interval" in summary and "(forgetting)" in summary
