"""Forgetting and efficiency of continual pre-training: the evaluation of Kessler, Thomas, Karout (ICASSP 2022),
Figs. 4-6.

Each continual run (cwav2vec 2.0 or a baseline) gives a *checkpoint sequence*: the end of the run it continued
(the first task), its snapshots (``pretrain(keep_snapshots=True)``) in update order, and its end. Every
checkpoint is probed on every language it has learnt as the paper fine-tunes: a task adapter trained with CTC
on the frozen model, stacked on the language's adapter where the language has one (cwav2vec 2.0), scored on
the test split; its self-supervised loss is measured too. Fine-tuning is seeded, so identical models score
identically: under cwav2vec 2.0 the first language's columns repeat bit for bit along the second task, under
warm-start they drift.

Beside the matrix, the continual-learning summaries of each method as CL-MASR (Della Libera et al., 2023) computes
them from its last checkpoint: average WER over the languages learnt, backward transfer (BWT: each earlier
language's WER when it was learnt minus its WER now; negative is forgetting) and forward transfer (FWT: the new
language's WER when the first task's model is fine-tuned on it directly, without continual pre-training, minus
its WER now; positive is a gain).

The efficiency table (Fig. 6) reads each run's ``log.csv`` and ``run.json``: median seconds per update,
training time to a target validation loss, total / trainable / frozen parameters.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from wavadapt.data.batching import filter_by_length
from wavadapt.data.corpora import open_corpus
from wavadapt.decoding import DecoderConfig
from wavadapt.errors import WavadaptError
from wavadapt.evaluation.bootstrap import paired
from wavadapt.evaluation.corpus import EvalResult, evaluate
from wavadapt.experiments.accounting import count_parameters
from wavadapt.experiments.workers import run_steps
from wavadapt.model.checkpoint import safe_name
from wavadapt.model.ctc import CTCModel
from wavadapt.model.pretraining import PretrainingModel, load_pretraining
from wavadapt.training.finetune import AugmentConfig, finetune
from wavadapt.training.loop import TrainConfig
from wavadapt.training.methods import MethodConfig
from wavadapt.training.pretrain import evaluate_pretraining, maskable
from wavadapt.training.run_folder import claim

METRICS = ("wer", "cer", "ctc_loss", "ssl_loss")
"""Per language: test WER and CER after fine-tuning, the fine-tuning's last training loss (a finer check of
"identical model" than error rates of barely trained models) and the self-supervised loss."""


# --- runs and their checkpoint sequences ---


@dataclass
class Run:
    """A finished pre-training or continual run directory."""

    path: Path
    tasks: list[str]
    """Every task the final model knows, in the order learnt."""
    task: str
    """The task this run trained."""
    info: dict
    """run.json."""
    log: list[dict[str, float]]
    """log.csv rows (numeric cells only)."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def end_update(self) -> int:
        updates = [int(r["update"]) for r in self.log if "update" in r]
        return max(updates) if updates else int(self.info["train"]["max_updates"])


def read_run(path: str | Path) -> Run:
    """Read a run directory written by :func:`wavadapt.training.pretrain.pretrain` (``pretraining.json``,
    ``run.json``)."""
    path = Path(path)
    try:
        tasks = list(json.loads((path / "pretraining.json").read_text(encoding="utf-8"))["tasks"])
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
        task = info["task"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise WavadaptError(f"{path}: not a finished pre-training run ({e})") from None
    log = []
    if (path / "log.csv").is_file():
        with (path / "log.csv").open(newline="") as f:
            log = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    return Run(path, tasks, task, info, log)


@dataclass(frozen=True)
class Checkpoint:
    """One full state (a :func:`save_pretraining` directory) and its place on the learning curves."""

    path: Path
    run: str
    task: str
    """The task being learnt when it was saved."""
    update: int
    """Updates of that task."""
    step: int
    """Updates since the first task began: the x-axis shared by every method."""

    @property
    def position(self) -> str:
        return f"{self.task}@{self.update}"


def checkpoint_sequences(runs: Sequence[Run]) -> dict[str, list[Checkpoint]]:
    """Per method, i.e. per run that no other given run continues (named by its directory): the end of the
    run it continued (the given run whose tasks are its earlier ones), then its snapshots in update order and
    its end (which replaces a snapshot of the same update)."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise WavadaptError(f"run directories must have distinct names (they label the methods): {names}")

    def parent(run: Run) -> Run | None:
        found = [r for r in runs if r.tasks == run.tasks[:-1]]
        if len(found) > 1:
            raise WavadaptError(f"{run.name} continues tasks {run.tasks[:-1]}, learnt by several given runs "
                                f"({', '.join(r.name for r in found)}); give only the one it continued")
        return found[0] if found else None

    def offset(run: Run) -> int:
        p = parent(run)
        return 0 if p is None else offset(p) + p.end_update

    def end(run: Run) -> Checkpoint:
        return Checkpoint(run.path, run.name, run.task, run.end_update, offset(run) + run.end_update)

    parents = {p.name for p in map(parent, runs) if p is not None}
    sequences = {}
    for run in runs:
        if run.name in parents:
            continue
        snapshots = {int(d.name.removeprefix("update_")): d for d in run.path.glob("snapshots/update_*")
                     if (d / "pretraining.json").is_file()}
        own = [Checkpoint(d, run.name, run.task, u, offset(run) + u) for u, d in sorted(snapshots.items())
               if u != run.end_update] + [end(run)]
        p = parent(run)
        sequences[run.name] = ([end(p)] if p is not None else []) + own
    return sequences


# --- probing one checkpoint ---


@dataclass
class ProbeConfig:
    """How every checkpoint is probed: adapter fine-tuning on a labeled corpus scored on its test split, and
    the self-supervised loss on another split. Seeded, so that equal models score equally."""

    corpus: str | Path
    """Labeled corpus root (``open_corpus(corpus, split, language)``), e.g. a synthetic corpus."""
    max_updates: int = 20000
    lr: float = 5e-5
    adapter_size: int = 256
    max_seconds_per_batch: float = 200.0
    train_split: str = "train"
    test_split: str = "test"
    ssl_split: str = "dev"
    ssl_crop_seconds: float | None = None
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    decoder: DecoderConfig | None = None
    """A beam search to score the test split with (greedy's scores beside it); None: greedy alone."""
    lms: dict[str, Path] = field(default_factory=dict)
    """The beam search's LM per language."""
    feature_cache: Path | None = None
    """Root of the fine-tuning runs' cached CNN output (``finetune(feature_cache=...)``): the probes of checkpoints
    that share a CNN (every method but warm-start freezes it) share one cache per language; None: none."""

    def decoder_for(self, language: str) -> DecoderConfig | None:
        return self.decoder and replace(self.decoder, lm=self.lms.get(language, self.decoder.lm))

    def to_dict(self) -> dict:
        """The settings as JSON values: paths as strings, the decoder described."""
        decoder = ("; ".join(f"{lang}: {self.decoder_for(lang).describe()}" for lang in self.lms)
                   if self.decoder and self.lms else (self.decoder or DecoderConfig()).describe())
        return {**asdict(self), "corpus": str(self.corpus), "lms": {k: str(v) for k, v in self.lms.items()},
                "decoder": decoder, "feature_cache": self.feature_cache and str(self.feature_cache)}


def _require_learnt(model: PretrainingModel, language: str, checkpoint: Path) -> None:
    if language not in model.tasks:
        raise WavadaptError(f"{checkpoint}: the checkpoint has not learnt {language!r} (it knows "
                            f"{', '.join(model.tasks)}); only languages it has seen can be fine-tuned")


def finetune_language(checkpoint: str | Path, language: str, config: ProbeConfig,
                      out_dir: str | Path, reference: bool = False) -> tuple[EvalResult, list[dict]]:
    """Fine-tune task ``<language>/asr`` (CTC head + task adapter; nothing of the checkpoint trains) on the
    checkpoint's backbone and score it on the test split; returns the scores and the training log.

    Where the language trained its own adapter set (cwav2vec 2.0), the task adapter is stacked on it and its
    layer norms start from the language's; otherwise (the first task, the baselines) it sits on the plain
    backbone. ``reference``: a language the checkpoint has not learnt, on its plain backbone (forward transfer's
    reference).
    """
    checkpoint = Path(checkpoint)
    pt = load_pretraining(checkpoint)
    if not reference:
        _require_learnt(pt, language, checkpoint)
    stack = [] if reference else pt.stacks[language]
    if len(stack) > 1:
        raise WavadaptError(f"{checkpoint}: task {language!r} runs a stack of adapter sets {stack}; "
                            "a task adapter stacks on one language adapter")
    task = f"{language}/asr"
    model = CTCModel(pt.backbone)
    method = MethodConfig("adapters", adapter_size=config.adapter_size, stack_on=stack[0] if stack else None)
    train = TrainConfig(max_updates=config.max_updates, lr=config.lr, seed=config.seed, progress=False,
                        max_seconds_per_batch=config.max_seconds_per_batch)
    history = finetune(model, task, open_corpus(config.corpus, config.train_split, language), method, train, out_dir,
                       augment=config.augment, feature_cache=config.feature_cache)
    result = evaluate(model, open_corpus(config.corpus, config.test_split, language), task=task,
                      max_seconds_per_batch=config.max_seconds_per_batch, decoder=config.decoder_for(language))
    return result, history


def ssl_loss(model: PretrainingModel, language: str, config: ProbeConfig) -> float:
    """The self-supervised loss per masked step of task ``language`` on the ssl split (masks and distractors
    drawn from ``config.seed``)."""
    model.activate(language)
    readable = filter_by_length(open_corpus(config.corpus, config.ssl_split, language)).kept  # reads the lengths
    utterances, _ = maskable(model, readable, config.ssl_crop_seconds)
    if not utterances:
        raise WavadaptError(f"no {language} utterance of split {config.ssl_split!r} is long enough to mask")
    return evaluate_pretraining(model, utterances, config.ssl_crop_seconds, config.max_seconds_per_batch,
                                config.seed)["loss"]


def probe(checkpoint: str | Path, language: str, config: ProbeConfig, out_dir: str | Path) -> dict[str, float]:
    """``<metric>_<language>`` (see :data:`METRICS`; with a beam search, ``greedy_wer_`` and ``greedy_cer_`` too) of a
    language the checkpoint has learnt; the fine-tuning run is redone from scratch in ``out_dir``."""
    shutil.rmtree(out_dir, ignore_errors=True)  # the training log would otherwise append to an old run's
    result, history = finetune_language(checkpoint, language, config, out_dir)
    scores = {f"wer_{language}": result.wer, f"cer_{language}": result.cer, f"ctc_loss_{language}": history[-1]["loss"],
              f"ssl_loss_{language}": ssl_loss(load_pretraining(checkpoint), language, config),
              f"counts_{language}": result.counts}  # per utterance, for the bootstrap intervals of BWT
    if result.greedy_wer is not None:
        scores |= {f"greedy_wer_{language}": result.greedy_wer, f"greedy_cer_{language}": result.greedy_cer}
    return scores


def language_fingerprint(model: PretrainingModel, language: str) -> str:
    """SHA-256 of what probing ``language`` reads from a checkpoint: every tensor but other tasks' own (their
    adapter sets, layer-norm copies and heads, which the language's routing never runs). Probes are seeded, so
    checkpoints of equal fingerprints score equally: cwav2vec 2.0's earlier languages along a later one's run."""
    own = {language, *model.stacks[language]}
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if _owner(key) in (None, *own):
            digest.update(f"{key} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _owner(key: str) -> str | None:
    """The task or adapter set a state key belongs to (``heads.<t>.``, ``.tasks.<t>.``, ``.sets.<s>.``), if any."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("tasks", "sets") or (part == "heads" and i == 0):
            return parts[i + 1]
    return None


def _probes(sequences: dict[str, list[Checkpoint]], languages: Sequence[str] | None
            ) -> tuple[dict[Path, dict[str, str]], dict[str, tuple[Checkpoint, str]]]:
    """Each checkpoint's ``{language: fingerprint}`` of the languages to probe, and per fingerprint the first
    checkpoint and language that has it: a language is probed once per :func:`language_fingerprint`, so once at
    the first task's end that every method shares, and once along a run that leaves it untouched (cwav2vec 2.0)."""
    fingerprints: dict[Path, dict[str, str]] = {}
    todo: dict[str, tuple[Checkpoint, str]] = {}
    for c in {c.path.resolve(): c for sequence in sequences.values() for c in sequence}.values():
        model = load_pretraining(c.path)
        learnt = [t for t in model.tasks if languages is None or t in languages]
        fingerprints[c.path.resolve()] = {lang: language_fingerprint(model, lang) for lang in learnt}
        for lang, fingerprint in fingerprints[c.path.resolve()].items():
            todo.setdefault(fingerprint, (c, lang))
    return fingerprints, todo


def _first_models(sequences: dict[str, list[Checkpoint]], languages: Sequence[str] | None) -> dict[str, Path]:
    """Per language a continual run learns, the model the run continued (the first checkpoint of its sequence, the
    same for every method): forward transfer's reference fine-tunes it on the language directly."""
    firsts = {}
    for sequence in sequences.values():
        for c in sequence[1:]:
            if c.task != sequence[0].task and (languages is None or c.task in languages):
                firsts.setdefault(c.task, sequence[0].path)
    return firsts


def forgetting_and_references(sequences: dict[str, list[Checkpoint]], config: ProbeConfig, out_dir: str | Path,
                              languages: Sequence[str] | None = None, echo: Callable[[str], None] | None = None,
                              jobs: int = 1) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """The forgetting matrix, one row per method and checkpoint (``method``, ``task``, ``update``, ``position``,
    ``step`` and each learnt language's :func:`probe` scores), and forward transfer's references (per new language,
    ``{"wer": ..., "cer": ...}`` of :func:`_first_models` fine-tuned on it). All of them are independent fine-tuning
    runs, so they share one pool, ``jobs`` at a time (:mod:`wavadapt.experiments.workers`); ``echo`` hears of each."""
    fingerprints, todo = _probes(sequences, languages)
    firsts = _first_models(sequences, languages)
    if echo is not None:
        echo(f"{len(todo)} probes for {sum(map(len, fingerprints.values()))} languages at {len(fingerprints)} "
             f"checkpoints (a language whose fingerprint repeats is probed once) and {len(firsts)} forward-transfer "
             f"reference(s) (the first model fine-tuned on each new language), {jobs} at a time")
    out_dir = Path(out_dir)
    references = [(finetune_language, (first, language, config, out_dir / "reference" / safe_name(language), True))
                  for language, first in firsts.items()]
    probes = [(probe, (c.path, lang, config, out_dir / "finetune" / c.run / f"update_{c.update:07d}" / safe_name(lang)))
              for c, lang in todo.values()]
    names = [f"reference {language}" for language in firsts] + [f"probed {lang} at {c.run} {c.position}"
                                                                for c, lang in todo.values()]
    results = run_steps(references + probes, jobs, done=echo and (lambda i: echo(names[i])))
    by_fingerprint = dict(zip(todo, results[len(references):], strict=True))
    rows = [{"method": method, "task": c.task, "update": c.update, "position": c.position, "step": c.step,
             **{k: v for f in fingerprints[c.path.resolve()].values() for k, v in by_fingerprint[f].items()}}
            for method, sequence in sequences.items() for c in sequence]
    return rows, {language: {"wer": result.wer, "cer": result.cer}
                  for language, (result, _) in zip(firsts, results[:len(references)], strict=True)}


SUMMARY_METRICS = ("wer", "cer")
"""CL-MASR's summaries are of WER; the CER ones say more where WER is near 100% (small models)."""


def continual_summaries(rows: list[dict], references: dict[str, dict[str, float]]) -> list[dict]:
    """Per method, from its last checkpoint's row (see the module's docstring), for each metric m of
    :data:`SUMMARY_METRICS`: ``average_m``, ``bwt_m``, ``fwt_m`` (None where nothing was learnt before, or no
    reference) and ``reference_m``, with the languages they average."""
    summaries = []
    for method in dict.fromkeys(r["method"] for r in rows):
        sequence = [r for r in rows if r["method"] == method]
        last = sequence[-1]
        learnt = [k[4:] for k in last if k.startswith("wer_") and last[k] is not None]
        earlier = [lang for lang in learnt if lang != last["task"]]
        summary = {"method": method, "languages": learnt}
        for m in SUMMARY_METRICS:
            when_learnt = {lang: next((r[f"{m}_{lang}"] for r in reversed(sequence) if r["task"] == lang), None)
                           for lang in earlier}
            drops = [when_learnt[lang] - last[f"{m}_{lang}"] for lang in earlier if when_learnt[lang] is not None]
            reference = references.get(last["task"], {}).get(m)
            summary |= {f"average_{m}": statistics.mean(last[f"{m}_{lang}"] for lang in learnt) if learnt else None,
                        f"bwt_{m}": statistics.mean(drops) if drops else None,
                        f"bwt_{m}_interval": _bwt_interval(sequence, earlier, m),
                        f"fwt_{m}": None if reference is None else reference - last[f"{m}_{last['task']}"],
                        f"reference_{m}": reference}
        summaries.append(summary)
    return summaries


def _bwt_interval(sequence: list[dict], earlier: list[str], metric: str) -> list[float] | None:
    """The 95% paired bootstrap interval of backward transfer on one earlier language (its test utterances scored
    when learnt and now); None for several languages or rows without per-utterance counts."""
    if len(earlier) != 1:
        return None
    lang = earlier[0]
    learnt = next((r for r in reversed(sequence) if r["task"] == lang), None)
    before, now = (learnt or {}).get(f"counts_{lang}"), sequence[-1].get(f"counts_{lang}")
    if not before or not now or before.keys() != now.keys():
        return None
    return list(paired(before, now, metric)[1])


# --- efficiency (Fig. 6) ---


def seconds_at(log: Sequence[dict[str, float]], update: int) -> float | None:
    """Training seconds until ``update`` from the log's per-window ``update_seconds``: the windows before it and
    its share of the window holding it; None past the last timed window."""
    elapsed, last = 0.0, 0
    for row in log:
        if "update_seconds" not in row:
            continue
        end = int(row["update"])
        if update <= end:
            return elapsed + (update - last) * row["update_seconds"]
        elapsed, last = elapsed + (end - last) * row["update_seconds"], end
    return None


def efficiency(runs: Sequence[Run], target_loss: float | None = None) -> tuple[list[dict], list[str]]:
    """Per run: updates, median seconds per update (and relative to the slowest run), training seconds, seconds
    until the first validation loss <= ``target_loss``, and total / trainable / frozen parameters (total: the
    whole saved model, every head and adapter set). Returns the rows and notes on what the logs lack."""
    rows, notes = [], []
    for run in runs:
        times = [r["update_seconds"] for r in run.log if "update_seconds" in r]
        if not times:
            notes.append(f"{run.path / 'log.csv'} has no update_seconds column: no update times")
        reached = None
        if target_loss is not None:
            reached = next((int(r["update"]) for r in run.log if r.get("valid_loss", math.inf) <= target_loss), None)
        total = count_parameters(load_pretraining(run.path))["total"]
        trainable = run.info["trainable_parameters"]
        rows.append({"method": run.name, "task": run.task, "updates": run.end_update,
                     "median_update_seconds": statistics.median(times) if times else None,
                     "train_seconds": seconds_at(run.log, run.end_update), "target_loss": target_loss,
                     "seconds_to_target": None if reached is None else seconds_at(run.log, reached),
                     "total_parameters": total, "trainable_parameters": trainable,
                     "frozen_parameters": total - trainable})
    slowest = max((r["median_update_seconds"] for r in rows if r["median_update_seconds"]), default=None)
    for r in rows:
        r["relative_update_time"] = r["median_update_seconds"] / slowest if r["median_update_seconds"] else None
    if target_loss is not None and all(r["seconds_to_target"] is None for r in rows):
        notes.append(f"no run logged a validation loss <= {target_loss} (validate with --valid-split)")
    return rows, notes


# --- the whole evaluation ---


@dataclass
class ContinualReport:
    """The forgetting matrix (rows: checkpoints) and the efficiency table (rows: methods)."""

    languages: list[str]
    forgetting: list[dict]
    summaries: list[dict]
    """Per method: average WER, BWT, FWT (:func:`continual_summaries`)."""
    efficiency: list[dict]
    notes: list[str]
    probe: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """The tables as text: per checkpoint and language WER, CER, fine-tuning and self-supervised loss; per method
        average WER, BWT and FWT; efficiency."""
        w = max([len("method"), *(len(r["method"]) for r in self.forgetting + self.efficiency)]) + 2
        head = f"{'method':<{w}}{'checkpoint':<12}{'step':>6}" + "".join(
            f"{f'{lang} WER':>9}{f'{lang} CER':>9}{f'{lang} CTC':>9}{f'{lang} SSL':>9}" for lang in self.languages)
        lines = [f"forgetting: test WER / CER after fine-tuning ({self.probe['decoder']}), last fine-tuning loss "
                 f"(CTC), self-supervised loss (SSL) on {self.probe['ssl_split']}", head]
        for r in self.forgetting:
            cells = "".join(_cell(r.get(f"{m}_{lang}"), m) for lang in self.languages for m in METRICS)
            lines.append(f"{r['method']:<{w}}{r['position']:<12}{r['step']:>6}{cells}")
        lines += ["", "continual learning (CL-MASR): average WER / CER over the languages learnt, backward transfer "
                  "(BWT, < 0: forgetting) and forward transfer (FWT, > 0: a gain over fine-tuning the first model "
                  "directly) at each method's last checkpoint, in points",
                  f"{'method':<{w}}" + "".join(f"{f'avg {m.upper()}':>9}{f'BWT {m.upper()}':>9}{f'FWT {m.upper()}':>9}"
                                               for m in SUMMARY_METRICS)]
        lines += [f"{r['method']:<{w}}" + "".join(f"{_cell(r[f'average_{m}'], m)}{_signed(r[f'bwt_{m}'])}"
                                                  f"{_signed(r[f'fwt_{m}'])}" for m in SUMMARY_METRICS)
                  for r in self.summaries]
        lines += ["", "efficiency (Fig. 6): seconds per update (median; x of the slowest), training seconds, "
                  "seconds to the target validation loss, parameters",
                  f"{'method':<{w}}{'task':<6}{'updates':>8}{'s/update':>10}{'x':>6}{'train s':>9}{'to target':>10}"
                  f"{'total':>13}{'trainable':>13}{'frozen':>13}"]
        for r in self.efficiency:
            lines.append(f"{r['method']:<{w}}{r['task']:<6}{r['updates']:>8}{_num(r['median_update_seconds'], 10, 3)}"
                         f"{_num(r['relative_update_time'], 6, 2)}{_num(r['train_seconds'], 9, 1)}"
                         f"{_num(r['seconds_to_target'], 10, 1)}{r['total_parameters']:>13,}"
                         f"{r['trainable_parameters']:>13,}{r['frozen_parameters']:>13,}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return f"{'-':>9}"
    return f"{value:>9.2%}" if metric in ("wer", "cer") else f"{value:>9.4f}"


def _signed(value: float | None) -> str:
    """A WER difference in percentage points."""
    return f"{'-':>9}" if value is None else f"{100 * value:>+9.2f}"


def _num(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)


def evaluate_continual(run_dirs: Sequence[str | Path], config: ProbeConfig, out_dir: str | Path,
                       target_loss: float | None = None, languages: Sequence[str] | None = None,
                       echo: Callable[[str], None] | None = None, jobs: int = 1, overwrite: bool = False
                       ) -> ContinualReport:
    """Probe every checkpoint of every method's sequence (:func:`checkpoint_sequences`), summarise each method
    (:func:`continual_summaries`) and time the runs; write ``forgetting``, ``continual_learning`` and ``efficiency``
    as .csv and .json (and the fine-tuning runs under ``finetune/`` and ``reference/``) into ``out_dir``.
    ``languages`` restricts the probed languages; each must be known to some run. A folder that holds an
    evaluation already is refused unless ``overwrite`` (the probes are redone from scratch either way)."""
    claim(out_dir, ("forgetting.json", "finetune", "reference"), overwrite=overwrite, can_resume=False)
    runs = [read_run(d) for d in run_dirs]
    if not runs:
        raise WavadaptError("no run directories given")
    known = list(dict.fromkeys(t for r in runs for t in r.tasks))
    unknown = [lang for lang in languages or () if lang not in known]
    if unknown:
        raise WavadaptError(f"no given run has learnt {', '.join(unknown)} (they know {', '.join(known)}); "
                            "only languages a checkpoint has seen can be fine-tuned")
    sequences = checkpoint_sequences(runs)
    rows, references = forgetting_and_references(sequences, config, out_dir, languages, echo, jobs)
    summaries = continual_summaries(rows, references)
    leaves = [r for r in runs if r.name in sequences]
    timing, notes = efficiency(leaves, target_loss)
    report = ContinualReport([t for t in known if languages is None or t in languages], rows, summaries, timing,
                             notes, config.to_dict())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table, extra in (("forgetting", rows, {"languages": report.languages, "probe": report.probe}),
                               ("continual_learning", summaries, {}),
                               ("efficiency", timing, {"target_loss": target_loss, "notes": notes})):
        _write_csv(out_dir / f"{name}.csv", [{k: v for k, v in r.items() if not k.startswith("counts_")}
                                              for r in table])  # per-utterance counts: in the JSON only
        (out_dir / f"{name}.json").write_text(json.dumps({**extra, "rows": table}, indent=2) + "\n", encoding="utf-8")
    return report
