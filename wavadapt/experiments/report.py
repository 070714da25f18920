"""`wavadapt report RUN_DIR`: one Markdown file with PNG plots from what an experiment's runs wrote.

The experiment directory may hold any of::

    params.json                     `wavadapt params MODEL --all --json`
    finetune/<lang>/<name>/         `wavadapt finetune` runs: run.json, log.csv, eval.json (test split)
    continual/<method>/             `wavadapt continual` runs: run.json, log.csv
    evaluate-continual/             `wavadapt evaluate-continual`: forgetting, continual_learning and efficiency
                                    (.csv / .json)

A missing part leaves its section with a one-line note.
"""

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from wavadapt.errors import WavadaptError
from wavadapt.evaluation.bootstrap import paired

Series = dict[str, tuple[Sequence[float], Sequence[float]]]
"""Legend label -> (x values, y values)."""


# --- reading ---


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file; numeric cells become floats and empty cells are left out (log.csv's columns grow as
    metrics appear, so earlier rows have blanks)."""
    with path.open(newline="") as f:
        return [{k: _value(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _table_rows(directory: Path, name: str) -> list[dict] | None:
    """evaluate-continual's ``name`` table: the JSON (typed) if present, else the CSV."""
    data = _read_json(directory / f"{name}.json")
    if data is not None:
        return data["rows"]
    return read_csv(directory / f"{name}.csv") if (directory / f"{name}.csv").is_file() else None


@dataclass
class FinetuneRun:
    """One `wavadapt finetune` run directory."""

    language: str
    name: str
    method: dict
    """run.json's method: method, top_n, adapter_size, ..."""
    log: list[dict]
    result: dict | None
    """eval.json (`EvalResult.to_dict`), None when the run was not evaluated."""
    from_scratch: bool = False
    """Fine-tuned from fresh weights, not the pre-trained backbone (run.json's train.extra)."""

    @property
    def label(self) -> str:
        """The method with its N, e.g. ``top-n-adapters N=6``, or ``full from scratch``."""
        n = self.method.get("top_n")
        return self.method["method"] + (f" N={n}" if n is not None else "") + (" from scratch" if self.from_scratch
                                                                                else "")


def read_finetune_runs(directory: Path) -> list[FinetuneRun]:
    """Every ``<lang>/<name>/`` with a run.json under ``directory``, sorted by language and name."""
    runs = []
    for info in sorted(directory.glob("*/*/run.json")):
        run = info.parent
        log = read_csv(run / "log.csv") if (run / "log.csv").is_file() else []
        meta = json.loads(info.read_text(encoding="utf-8"))
        scratch = bool((meta.get("train", {}).get("extra") or {}).get("from_scratch"))
        runs.append(FinetuneRun(run.parent.name, run.name, meta["method"], log, _read_json(run / "eval.json"),
                                scratch))
    return runs


def updates_to_target(log: Sequence[dict], target_cer: float) -> int | None:
    """The first logged update whose validation CER is <= ``target_cer``; None if none is."""
    return next((int(r["update"]) for r in log if r.get("valid_cer", float("inf")) <= target_cer), None)


# --- plots ---


def line_figure(title: str, xlabel: str, ylabel: str, series: Series, from_zero: bool = True,
                integer_x: bool = False) -> Figure:
    """One line with markers per series; the y axis starts at 0 (``from_zero``), the x ticks are whole numbers
    (``integer_x``, for counts such as N)."""
    fig = Figure(figsize=(8.0, 4.0))  # no pyplot: a bare Figure renders PNGs with Agg and holds no global state
    ax = fig.add_subplot()
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if from_zero:
        ax.set_ylim(bottom=0)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    fig.tight_layout()
    return fig


def bar_figure(title: str, xlabel: str, ylabel: str, groups: Sequence[str], series: dict[str, Sequence[float]],
               intervals: dict[str, Sequence[tuple[float, float] | None]] | None = None) -> Figure:
    """Grouped bars: one group per entry of ``groups``, one bar per series in each, with each bar's 95% interval
    (``intervals``, in the bars' units) drawn as an error bar where given."""
    fig = Figure(figsize=(max(8.0, 1.2 * len(groups) + 1.6), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        bounds = (intervals or {}).get(label) or [None] * len(values)
        below = [v - b[0] if b else 0.0 for v, b in zip(values, bounds, strict=True)]
        above = [b[1] - v if b else 0.0 for v, b in zip(values, bounds, strict=True)]
        ax.bar([g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))], values, width, label=label,
               yerr=[below, above] if any(bounds) else None, capsize=3)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _legend_outside(ax)
    fig.tight_layout()
    return fig


def matrix_figure(title: str, labels: Sequence[str], counts: Sequence[Sequence[int]]) -> Figure:
    """A confusion matrix: rows the true class, columns the one found, each cell's count written in it."""
    fig = Figure(figsize=(1.2 * len(labels) + 2.4, 1.0 * len(labels) + 1.6))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("identified as")
    ax.set_ylabel("spoken")
    ax.set_title(title)
    top = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    fig.tight_layout()
    return fig


def _legend_outside(ax) -> None:
    """The legend right of the axes: inside, a dozen curves' legend hides the curves it names."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


# --- Markdown ---


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _rate(result: dict | None, metric: str) -> str:
    """An error rate of an eval.json with its 95% bootstrap interval: ``73.37% (70.1-76.5)``."""
    if not result or result.get(metric) is None:
        return "-"
    bounds = result.get(f"{metric}_interval")
    return _percent(result[metric]) + (f" ({100 * bounds[0]:.1f}-{100 * bounds[1]:.1f})" if bounds else "")


def difference(a: dict, b: dict, metric: str, a_counts: str = "counts", b_counts: str = "counts"
               ) -> tuple[float, tuple[float, float]] | None:
    """``metric`` of eval.json ``a`` minus that of ``b`` and the 95% paired bootstrap interval of the difference,
    over the utterances both scored; None when either lacks per-utterance counts."""
    return paired(a.get(a_counts) or {}, b.get(b_counts) or {}, metric)


def _compared(change: tuple[float, tuple[float, float]] | None, unit: str = "points") -> str:
    """A difference in words: its size and interval, and whether it is more than the test set's noise."""
    if change is None:
        return "no per-utterance scores to tell it from noise"
    value, (low, high) = change
    size = f"{100 * value:+.1f} {unit} (95% interval {100 * low:+.1f} to {100 * high:+.1f})"
    return f"{size}: within noise" if low <= 0 <= high else f"{size}: beyond the test set's noise"


def _points(value: float | None) -> str:
    """A difference of error rates, in percentage points."""
    return "-" if value is None else f"{100 * value:+.2f}"


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class Report:
    """The Markdown sections, the plots written, notes on skipped sections and the printed summary."""

    out_dir: Path
    sections: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary_rows: list[list[str]] = field(default_factory=list)

    def section(self, title: str, *parts: str) -> None:
        self.sections.append("\n\n".join([f"## {title}", *parts]))

    def skip(self, title: str, why: str) -> None:
        self.notes.append(f"{title}: {why}")
        self.section(title, f"_Skipped: {why}._")

    def plot(self, name: str, fig: Figure) -> str:
        """Save ``fig`` as ``name``.png; returns its Markdown image link."""
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        self.plots.append(path)
        return f"![{fig.axes[0].get_title()}]({path.name})"

    findings: list[str] = field(default_factory=list)
    """The opening summary's sentences (:func:`_findings`)."""

    @property
    def markdown(self) -> str:
        summary = ["## Summary\n\n" + "\n".join(f"- {f}" for f in self.findings)] if self.findings else []
        return "\n\n".join(["# wavadapt experiment report", *summary, *self.sections]) + "\n"

    @property
    def summary(self) -> str:
        """Fine-tuning results as a text table, then the skipped sections."""
        header = ["language", "method", "run", "WER", "CER", "greedy WER", "greedy CER", "updates to target"]
        rows = [header, *self.summary_rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join((lines if self.summary_rows else ["no fine-tuning runs"])
                         + [f"skipped {n}" for n in self.notes] + [f"report: {self.out_dir / 'report.md'}"])


# --- sections ---


def corpus_sources(corpus_dir: Path) -> dict[str, dict]:
    """Per language of an experiment's corpus: whether its speech is real or synthetic, where it comes from, and
    its splits' sizes (``{"kind", "source", "splits": {split: (utterances, seconds)}}``)."""
    sources = {}
    synthetic = _read_json(corpus_dir / "corpus.json")
    for language, entry in (synthetic or {"languages": {}})["languages"].items():
        sources[language] = {"kind": "synthetic", "source": "espeak-ng voices reading Debian's fortune sentences",
                             "splits": {s: (v["utterances"], v["seconds"]) for s, v in entry["splits"].items()}}
    for prepared in sorted(corpus_dir.glob("*/prepare.json")):
        info = _read_json(prepared)
        packages = ", ".join(f"{p} {v}" for p, v in info["packages"].items())
        sources[info["language"]] = {"kind": "real", "source": f"{info['corpus']} recordings ({packages}; "
                                                               f"{info['license']})",
                                     "splits": {s: (v["utterances"], v["seconds"]) for s, v in info["splits"].items()}}
    return sources


def _data(report: Report, corpus_dir: Path) -> None:
    title = "Data"
    sources = corpus_sources(corpus_dir)
    if not sources:
        return report.skip(title, f"no corpus.json or prepared corpus in {corpus_dir}")
    rows = [[language, "**real speech**" if s["kind"] == "real" else "synthetic speech", s["source"],
             *(f"{s['splits'][split][0]} ({s['splits'][split][1] / 60:.1f} min)" if split in s["splits"] else "-"
               for split in ("pretrain", "train", "dev", "test"))] for language, s in sources.items()]
    report.section(title, _table(["language", "speech", "source", "pretrain", "train", "dev", "test"], rows),
                   "Utterances (minutes) per split; every test figure below is on these test splits.")


def _data_findings(corpus_dir: Path) -> list[str]:
    sources = corpus_sources(corpus_dir)
    if not sources:
        return []
    words = [f"{language}: {s['kind']} speech ({s['source'].split(' (')[0]}), test split "
             f"{s['splits'].get('test', (0, 0))[0]} utterances" for language, s in sources.items()]
    return ["Data: " + "; ".join(words) + "."]


def _parameters(report: Report, run_dir: Path) -> None:
    title = "Parameters per method"
    data = _read_json(run_dir / "params.json")
    if data is None:
        return report.skip(title, "no params.json")
    accounts = data["accounts"]
    rows = [[a["method"], a["top_n"] if a["top_n"] is not None else "-", f"{a['total']:,}", f"{a['trainable']:,}",
             f"{a['frozen']:,}", f"{a['percent']:.2f}"] for a in accounts]
    report.section(title, _table(["method", "N", "total", "trainable", "frozen", "trainable %"], rows),
                   accounts[0]["denominator"] if accounts else "")


def _finetuning(report: Report, runs: list[FinetuneRun], target_cer: float) -> None:
    title = "Fine-tuning: test WER and CER"
    evaluated = [r for r in runs if r.result is not None]
    languages = list(dict.fromkeys(r.language for r in evaluated))
    if not evaluated:
        report.skip(title, "no fine-tuning run with an eval.json")
    else:
        labels = list(dict.fromkeys(r.label for r in evaluated))
        scores = {(r.label, r.language): r.result for r in evaluated}
        # Beside a beam search's scores, greedy's of the same logits: the LM's gain per method.
        beam = [r.result for r in evaluated if r.result.get("greedy_wer") is not None]
        metrics = ([("greedy_wer", "WER greedy"), ("wer", "WER beam"), ("greedy_cer", "CER greedy"),
                    ("cer", "CER beam")] if beam else [("wer", "WER"), ("cer", "CER")])
        rows = [[label, *(cell for lang in languages
                          for cell in (scores.get((label, lang), {}).get("utterances", "-"),
                                       *(_rate(scores.get((label, lang)), m) for m, _ in metrics)))]
                for label in labels]
        # NaN draws no bar: a method not run on a language must not look like 0% WER. CER is drawn too: a small
        # model's WER sits near 100% long after its CER shows what it learnt.
        bars = {f"{lang} {name}": [100 * scores[(label, lang)].get(m, float("nan")) if (label, lang) in scores
                                   else float("nan") for label in labels] for lang in languages for m, name in metrics}
        intervals = {f"{lang} {name}": [tuple(100 * b for b in scores[(label, lang)][f"{m}_interval"])
                                        if scores.get((label, lang), {}).get(f"{m}_interval") else None
                                        for label in labels] for lang in languages for m, name in metrics}
        decoders = sorted({r.result.get("decoder", "greedy") for r in evaluated})
        report.section(title, f"Decoded: {'; '.join(decoders)}" + (" (greedy: the same logits' best path)."
                                                                   if beam else ".")
                       + " Each rate with its 95% bootstrap interval over the test utterances (n), in brackets.",
                       _table(["method", *(f"{lang} {name}" for lang in languages
                                           for name in ("n", *(name for _, name in metrics)))], rows),
                       report.plot("finetune_error_rates", bar_figure(
                           "Test WER and CER per fine-tuning method (95% intervals)", "method", "error rate (%)",
                           labels, bars, intervals)))
    _top_n(report, evaluated)
    _convergence(report, runs, target_cer)
    report.summary_rows += [[r.language, r.label, r.name,
                             *(_percent(r.result and r.result.get(m))
                               for m in ("wer", "cer", "greedy_wer", "greedy_cer")),
                             str(updates_to_target(r.log, target_cer) or "-")] for r in runs]


def _top_n(report: Report, evaluated: list[FinetuneRun]) -> None:
    title = "Top-N curves"
    series = {}
    for method in ("top-n-adapters", "top-n-full"):
        for lang in dict.fromkeys(r.language for r in evaluated):
            for metric in ("wer", "cer"):
                points = sorted((r.method["top_n"], 100 * r.result[metric]) for r in evaluated
                                if r.method["method"] == method and r.language == lang)
                if points:
                    series[f"{method} ({lang}) {metric.upper()}"] = tuple(zip(*points, strict=True))
    if not series:
        return report.skip(title, "no evaluated top-n-adapters or top-n-full run")
    report.section(title, "Test WER and CER of the top-N methods against the number of trained (adapted) top layers.",
                   report.plot("top_n", line_figure("Test WER and CER vs top N layers", "N (top layers trained)",
                                                    "error rate (%)", series, integer_x=True)))


def _convergence(report: Report, runs: list[FinetuneRun], target_cer: float) -> None:
    title = "Fine-tuning convergence"
    logged = [r for r in runs if any("valid_cer" in row for row in r.log)]
    if not logged:
        return report.skip(title, "no fine-tuning log.csv with valid_cer")
    rows = [[r.language, r.label, r.name, updates_to_target(r.log, target_cer) or f"not reached (last update "
             f"{int(r.log[-1]['update'])})"] for r in logged]
    series = {f"{r.label} ({r.language}, {r.name})": tuple(zip(*[(row["update"], 100 * row["valid_cer"])
                                                                 for row in r.log if "valid_cer" in row], strict=True))
              for r in logged}
    report.section(title, f"First logged update with validation CER <= {target_cer:.2%}.",
                   _table(["language", "method", "run", "updates to target CER"], rows),
                   report.plot("valid_cer", line_figure("Validation CER vs updates", "update", "CER (%)", series)))


def _language_identification(report: Report, directory: Path) -> None:
    title = "Language identification"
    result = _read_json(directory / "eval.json")
    if result is None:
        return
    rows = [[label, _percent(rate), sum(row)] for (label, rate), row in zip(result["per_language"].items(),
                                                                          result["confusion"], strict=True)]
    report.section(title, f"An identifier on the frozen backbone (layer {_read_json(directory / 'run.json')['layer']})"
                   f" names the language of {_percent(result['accuracy'])} of {result['utterances']} test utterances.",
                   _table(["language", "accuracy", "test utterances"], rows),
                   report.plot("language_id_confusion", matrix_figure("Language identification on the test splits",
                                                                      result["labels"], result["confusion"])))


def _continual_runs(report: Report, directory: Path) -> None:
    title = "Continual pre-training loss"
    infos = sorted(directory.glob("*/run.json"))
    series = {}
    for info in infos:
        method = json.loads(info.read_text(encoding="utf-8"))["train"]["extra"].get("continual_method", "?")
        log = read_csv(info.parent / "log.csv") if (info.parent / "log.csv").is_file() else []
        for column in ("loss", "valid_loss"):
            points = [(r["update"], r[column]) for r in log if column in r]
            if points:
                series[f"{info.parent.name} ({method}) {column}"] = tuple(zip(*points, strict=True))
    if not series:
        return report.skip(title, "no continual run with a log.csv")
    report.section(title, report.plot("continual_loss", line_figure("Self-supervised loss during continual "
                                                                     "pre-training", "update", "loss", series)))


def _forgetting(report: Report, directory: Path) -> None:
    title = "Forgetting"
    rows = _table_rows(directory, "forgetting")
    if not rows:
        return report.skip(title, "no evaluate-continual/forgetting.csv or .json")
    languages = list(dict.fromkeys(k[4:] for r in rows for k in r if k.startswith("wer_")))
    cells = [[r["method"], r["position"], int(r["step"]),
              *(f(r.get(f"{m}_{lang}")) for lang in languages
                for m, f in (("wer", _percent), ("cer", _percent), ("ssl_loss", _number)))] for r in rows]
    parts = [_table(["method", "checkpoint", "step", *(f"{lang} {m}" for lang in languages
                                                          for m in ("WER", "CER", "SSL loss"))], cells)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for lang in languages:  # the cwav2vec 2.0 paper's Figs. 4 (WER) and 5 (SSL loss)
        for metric, name, scale in (("wer", "WER (%)", 100), ("cer", "CER (%)", 100), ("ssl_loss", "SSL loss", 1)):
            series = {}
            for method in methods:
                points = sorted((r["step"], scale * r[f"{metric}_{lang}"]) for r in rows
                                if r["method"] == method and r.get(f"{metric}_{lang}") is not None)
                if points:
                    series[method] = tuple(zip(*points, strict=True))
            if series:
                parts.append(report.plot(f"forgetting_{metric}_{lang}", line_figure(
                    f"{lang}: {name} vs pre-training updates", "pre-training updates (step)", name, series)))
    report.section(title, "Each checkpoint fine-tuned and tested on every language it has learnt.", *parts)


def _continual_learning(report: Report, directory: Path) -> None:
    title = "Continual learning summary"
    data = _read_json(directory / "continual_learning.json")  # its lists have no CSV form
    if not data or not data["rows"]:
        return report.skip(title, "no evaluate-continual/continual_learning.json")
    rows = data["rows"]
    report.section(title, "At each method's last checkpoint, as CL-MASR reports them (of WER, and of CER, which "
                   "says more while WER is near 100%): the average test error over the languages learnt; backward "
                   "transfer (BWT: each earlier language's error when learnt minus its error now, in points, with "
                   "its 95% paired bootstrap interval; below 0 is forgetting); forward transfer (FWT: the new "
                   "language's error when the first model is fine-tuned on it directly, without continual "
                   "pre-training, minus its error now; above 0 is a gain).",
                   _table(["method", "languages", *(f"{name} {m}" for m in ("WER", "CER")
                                                     for name in ("average", "BWT", "FWT", "FWT reference"))],
                          [[r["method"], ", ".join(r["languages"]),
                            *(_bwt(r, m) if name == "bwt" else f(r[f"{name}_{m}"]) for m in ("wer", "cer")
                              for name, f in (("average", _percent), ("bwt", _points), ("fwt", _points),
                                              ("reference", _percent)))] for r in rows]))


def _bwt(row: dict, metric: str) -> str:
    """Backward transfer in points, with its 95% paired bootstrap interval where the probes kept their counts."""
    bounds = row.get(f"bwt_{metric}_interval")
    return _points(row[f"bwt_{metric}"]) + (f" ({100 * bounds[0]:+.1f} to {100 * bounds[1]:+.1f})" if bounds else "")


def _efficiency(report: Report, directory: Path) -> None:
    title = "Continual pre-training efficiency"
    rows = _table_rows(directory, "efficiency")
    if not rows:
        return report.skip(title, "no evaluate-continual/efficiency.csv or .json")
    methods = [r["method"] for r in rows]
    table = _table(["method", "task", "updates", "s/update", "train s", "s to target", "total", "trainable", "frozen"],
                   [[r["method"], r["task"], int(r["updates"]), _number(r.get("median_update_seconds")),
                     _number(r.get("train_seconds"), 1), _number(r.get("seconds_to_target"), 1),
                     *(f"{int(r[f'{k}_parameters']):,}" for k in ("total", "trainable", "frozen"))] for r in rows])
    seconds = [r.get("median_update_seconds") or 0 for r in rows]
    params = {k: [r[f"{k}_parameters"] / 1e6 for r in rows] for k in ("trainable", "frozen")}
    report.section(title, table,
                   report.plot("update_time", bar_figure("Median time per update", "method", "seconds per update",
                                                         methods, {"s/update": seconds})),
                   report.plot("continual_parameters", bar_figure("Parameters per continual method", "method",
                                                                  "parameters (millions)", methods, params)))


def _findings(run_dir: Path, runs: list[FinetuneRun]) -> list[str]:
    """What the numbers show, in plain words, each against the papers: pre-training (from-scratch row), adapters
    against full fine-tuning, the LM, forgetting and update time of the continual methods."""
    return (_data_findings(run_dir / "corpus") + _finetuning_findings(run_dir, runs)
            + _language_id_findings(run_dir / "language-id") + _continual_findings(run_dir / "evaluate-continual"))


def _language_id_findings(directory: Path) -> list[str]:
    result = _read_json(directory / "eval.json")
    if result is None:
        return []
    each = ", ".join(f"{label} {_percent(rate)}" for label, rate in result["per_language"].items())
    return [f"The language identifier names the spoken language of {_percent(result['accuracy'])} of the test "
            f"utterances ({each}): `--task auto` routes each file to its language's task on it."]


def _finetuning_findings(run_dir: Path, runs: list[FinetuneRun]) -> list[str]:
    """Of the first language's fine-tuning runs; a difference is stated only where its paired bootstrap interval
    leaves out 0, and called within noise otherwise."""
    findings = []
    first = [r for r in runs if r.result is not None and r.language == (runs[0].language if runs else "")]
    by_label = {r.label: r.result for r in first}
    # Character error rates compare models, so greedy's where a beam search's word LM rewrote the words.
    greedy = {label: ("greedy_cer", "greedy_counts") if result.get("greedy_cer") is not None else ("cer", "counts")
              for label, result in by_label.items()}
    cer = {label: by_label[label][greedy[label][0]] for label in by_label}

    def versus(a: str, b: str) -> str:
        return _compared(difference(by_label[a], by_label[b], "cer", greedy[a][1], greedy[b][1]))

    if "full" in cer and "full from scratch" in cer:
        change = difference(by_label["full"], by_label["full from scratch"], "cer", greedy["full"][1],
                            greedy["full from scratch"][1])
        helps = change is not None and change[1][1] < 0
        findings.append(f"Pre-training {'helps' if helps else 'shows no gain beyond noise here'}: full fine-tuning of "
                        f"the pre-trained model reaches {cer['full']:.1%} test CER ({first[0].language}, greedy, "
                        f"{by_label['full']['utterances']} utterances) against {cer['full from scratch']:.1%} from "
                        f"scratch with the same architecture and updates; {_compared(change)}.")
    accounts = {(a["method"], a["top_n"]): a["percent"] for a in (_read_json(run_dir / "params.json") or
                                                                   {"accounts": []})["accounts"]}
    for r in first:
        if "full" in cer and "adapters" in r.method["method"]:
            share = accounts.get((r.method["method"], r.method.get("top_n")))
            findings.append(f"`{r.label}`{f' trains {share:.1f}% of the parameters and' if share else ''} reaches "
                            f"{cer[r.label]:.1%} CER, {cer[r.label] / cer['full']:.2f}x full fine-tuning's; against "
                            f"full fine-tuning: {versus(r.label, 'full')} (the paper finds adapters close to it).")
    beam = [r for r in first if r.result.get("greedy_wer") is not None]
    if beam:
        drops = "; ".join(f"`{r.label}` {r.result['greedy_wer']:.1%} -> {r.result['wer']:.1%}, "
                          + _compared(difference(r.result, r.result, "wer", "counts", "greedy_counts"))
                          for r in beam)
        findings.append(f"The beam search with a word LM of the training transcripts changes test WER from greedy "
                        f"decoding's as follows: {drops}.")
    return findings


def _continual_findings(directory: Path) -> list[str]:
    """Of evaluate-continual's tables in ``directory``."""
    findings = []
    rows = _table_rows(directory, "forgetting") or []
    for method in dict.fromkeys(r["method"] for r in rows):  # the first language's self-supervised loss
        sequence = [r for r in rows if r["method"] == method]
        language = sequence[0]["task"]
        before, after = (sequence[i].get(f"ssl_loss_{language}") for i in (0, -1))
        if len(sequence) > 1 and before is not None and after is not None:
            findings.append(f"`{method}`: the {language} self-supervised loss goes from {before:.4f} to {after:.4f} "
                            f"over the new language's training" + (" (unchanged: nothing it uses moved)."
                                                                   if before == after else "."))
    data = _read_json(directory / "continual_learning.json")
    for r in (data or {"rows": []})["rows"]:
        if r["bwt_cer"] is not None:
            # A change whose interval holds 0 is the test set's noise, neither forgetting nor a gain.
            bounds = r.get("bwt_cer_interval")
            noise = r["bwt_cer"] != 0 and bounds is not None and bounds[0] <= 0 <= bounds[1]
            forgets = r["bwt_cer"] < 0 and not noise
            # The paper: cwav2vec 2.0 keeps every earlier language exactly; the baselines forget.
            expected = {"cwav2vec": False, "warm-start": True, "multihead": True, "multihead-l2": True}.get(r["method"])
            paper = "" if expected is None else "; as in the paper" if forgets == expected else (
                "; the paper finds the baselines forget" if expected else "; the paper finds none")
            state = ("no forgetting" if r["bwt_cer"] == 0 else "within noise" if noise else
                     "forgetting" if forgets else "a gain")
            interval = f", 95% interval {100 * bounds[0]:+.2f} to {100 * bounds[1]:+.2f}" if bounds else ""
            findings.append(f"`{r['method']}`: backward transfer {100 * r['bwt_cer']:+.2f} CER points{interval} "
                            f"({100 * r['bwt_wer']:+.2f} WER) on the earlier language(s) ({state}{paper})"
                            + (f", forward transfer {100 * r['fwt_cer']:+.2f} CER points ({100 * r['fwt_wer']:+.2f} "
                               "WER) on the new one." if r["fwt_cer"] is not None else "."))
    timing = {r["method"]: r.get("median_update_seconds") for r in _table_rows(directory, "efficiency") or []}
    if timing.get("cwav2vec") and timing.get("warm-start"):
        ratio = timing["cwav2vec"] / timing["warm-start"]
        findings.append(f"A cwav2vec 2.0 update takes {ratio:.2f}x a warm-start update (the paper: about 0.68x, a "
                        "third less pre-training time).")
    return findings


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, target_cer: float = 0.5) -> Report:
    """Write ``report.md`` and its PNG plots into ``out_dir`` (default ``run_dir/report``) from whatever parts of
    the experiment directory ``run_dir`` exist; ``target_cer`` (a fraction) sets the convergence section's
    target."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WavadaptError(f"{run_dir}: no such directory")
    parts = ("experiment.json", "corpus", "params.json", "finetune", "language-id", "continual", "evaluate-continual")
    if not any((run_dir / part).exists() for part in parts):
        raise WavadaptError(f"{run_dir}: no experiment here (none of {', '.join(parts)}): give the folder "
                            "`wavadapt run` or `wavadapt demo` wrote")
    report = Report(Path(out_dir) if out_dir is not None else run_dir / "report")
    report.out_dir.mkdir(parents=True, exist_ok=True)
    runs = read_finetune_runs(run_dir / "finetune")
    report.findings = _findings(run_dir, runs)
    _data(report, run_dir / "corpus")
    _parameters(report, run_dir)
    _finetuning(report, runs, target_cer)
    _language_identification(report, run_dir / "language-id")
    _continual_runs(report, run_dir / "continual")
    _forgetting(report, run_dir / "evaluate-continual")
    _continual_learning(report, run_dir / "evaluate-continual")
    _efficiency(report, run_dir / "evaluate-continual")
    (report.out_dir / "report.md").write_text(report.markdown, encoding="utf-8")
    return report
