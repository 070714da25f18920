"""`wavadapt run RECIPE.yaml`: a whole experiment grid from one YAML recipe.

A recipe is the YAML form of :class:`Experiment`; every section is optional and unknown keys are refused.
The run writes the experiment directory `wavadapt report` reads::

    corpus/                          synthesised (``corpus.synth``) or prepared real corpus (``corpus.prepare``)
    lm/<lang>.arpa                   word n-gram LMs from the train split's transcripts (``decoding``)
    pretrain/<lang>/                 first task's pre-training run
    params.json                      `wavadapt params BACKBONE --all --json`
    finetune/<lang>/<method>[-N<n>]/ fine-tuning runs, each with eval.json (test split)
    continual/<method>/              continual pre-training runs of the new language
    evaluate-continual/              forgetting and efficiency tables
    report/                          report.md and its plots

With ``resume``, finished steps (a run directory holding its final files) are skipped and interrupted runs
continue from their last checkpoint, so an interrupted grid resumes by running the recipe again; ``experiment.json``
records the recipe, and a folder holding another experiment is refused. ``dry_run`` runs the same grid at toy
scale (:func:`toy`) to check the wiring.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import yaml

from wavadapt.errors import WavadaptError
from wavadapt.experiments.forgetting import ProbeConfig
from wavadapt.experiments.workers import run_steps
from wavadapt.training.finetune import AugmentConfig
from wavadapt.training.loop import TrainConfig
from wavadapt.training.run_folder import claim, provenance

Echo = Callable[[str], None]


# --- the recipe ---


@dataclass
class Splits:
    """The corpus split each role reads (e.g. ``test: dev-clean`` for LibriSpeech)."""

    pretrain: str = "pretrain"
    train: str = "train"
    dev: str = "dev"
    test: str = "test"


@dataclass
class SynthCorpus:
    """A corpus spoken by espeak-ng (`wavadapt synth`) into OUT/corpus."""

    languages: list[str] = field(default_factory=lambda: ["en", "es"])
    minutes: dict[str, float] = field(default_factory=lambda: {"pretrain": 10.0, "train": 3.0, "dev": 1.0,
                                                               "test": 1.0})
    speakers: int = 4
    seed: int = 0


@dataclass
class PreparedCorpus:
    """A real corpus that `wavadapt prepare` fetches from Debian's packages into OUT/corpus/<language>/."""

    corpus: str = "fillets-ng"
    language: str = "nl"
    seed: int = 0
    test_utterances: int = 150
    dev_utterances: int = 75
    packages: str | None = None
    """A folder holding the packages' .deb files (offline); default: apt-get download."""


@dataclass
class Corpus:
    """Where the audio comes from: ``synth``, ``prepare`` (real corpora, one per language) or ``root``, a
    directory with one corpus (LibriSpeech, Common Voice, fairseq manifests: anything `open_corpus` reads) per
    language in ``root/<lang>/``."""

    synth: SynthCorpus | None = None
    prepare: list[PreparedCorpus] = field(default_factory=list)
    root: str | None = None
    splits: Splits = field(default_factory=Splits)


@dataclass
class Pretrain:
    """Self-supervised pre-training of the first task from the backbone (`wavadapt pretrain`)."""

    language: str = "en"
    preset: str = "base"
    """Pre-training recipe (tiny, base, large) that ``train`` overrides."""
    train: dict = field(default_factory=dict)
    """TrainConfig overrides (max_updates, lr, update_freq, max_seconds_per_batch, ...)."""
    crop_seconds: float | None = None
    """Random crop of longer utterances (default: the preset's)."""
    keep_snapshots: bool = False


@dataclass
class FinetuneMethod:
    """One fine-tuning method of the grid; a list ``top_n`` is a sweep, one run per N."""

    method: str = "adapters"
    top_n: int | list[int] | None = None
    adapter_size: int = 256
    freeze_updates: int = 0
    from_scratch: bool = False
    """Start from fresh weights of the backbone's architecture (no pre-training), into ``<method>-scratch``: the
    row that shows what pre-training gives."""
    train: dict = field(default_factory=dict)
    """TrainConfig overrides for this method only (over the section's)."""

    def top_ns(self) -> list[int | None]:
        return self.top_n if isinstance(self.top_n, list) else [self.top_n]


@dataclass
class Finetune:
    """CTC fine-tuning of the backbone: every method (and N) on every language (`wavadapt finetune`)."""

    languages: list[str] = field(default_factory=lambda: ["en"])
    methods: list[FinetuneMethod] = field(default_factory=lambda: [FinetuneMethod()])
    train: dict = field(default_factory=dict)
    """TrainConfig overrides shared by the methods."""
    augment: dict = field(default_factory=dict)
    """AugmentConfig overrides (masking, layer drop)."""
    feature_cache: bool = False
    """Train on the frozen CNN's cached output (OUT/finetune/feature_cache, removed when the runs are done): one
    cache per CNN and language, shared by the methods."""


@dataclass
class LanguageIdentification:
    """A spoken-language identifier on the backbone (`wavadapt finetune --objective lid`), trained on the train
    splits of ``languages`` and tested on their test splits (accuracy, confusion matrix)."""

    languages: list[str] = field(default_factory=list)
    """Default: the fine-tuning languages and the continual one."""
    layer: int | None = None
    """The encoder layer it pools (default: the middle one)."""
    train: dict = field(default_factory=dict)
    """TrainConfig overrides."""


@dataclass
class Continual:
    """Continual pre-training of a new language with each method (`wavadapt continual`)."""

    language: str = "es"
    methods: list[str] = field(default_factory=lambda: ["warm-start", "multihead", "multihead-l2", "cwav2vec"])
    preset: str = "base"
    l2_weight: float = 1.0
    adapter_size: int = 256
    train: dict = field(default_factory=dict)
    crop_seconds: float | None = None
    checkpoint_every: int = 0
    keep_snapshots: bool = False
    feature_cache: bool = False
    """Train the methods that freeze the CNN (all but warm-start) on its cached output (OUT/continual/feature_cache,
    one cache they share, removed when the runs are done)."""


@dataclass
class EvaluateContinual:
    """Forgetting and efficiency of the continual runs (`wavadapt evaluate-continual`)."""

    probe: dict = field(default_factory=dict)
    """ProbeConfig overrides (max_updates, lr, adapter_size, ...); ``augment`` takes AugmentConfig's keys."""
    languages: list[str] | None = None
    target_loss: float | None = None
    feature_cache: bool = False
    """Probe on the frozen CNN's cached output (OUT/evaluate-continual/feature_cache, removed when the probes are
    done): one cache per CNN and language, shared by the checkpoints of every method that freezes the CNN."""


@dataclass
class Decoding:
    """A beam search with a word n-gram LM per language, estimated by `wavadapt lm` from the train split's
    transcripts only (never the test's: lmplz's fallback discounts where the text is too small), scoring every
    test evaluation of the grid beside greedy decoding (the continual probes' too, unless ``probes`` is false)."""

    lm_order: int = 3
    beam_size: int = 50
    lm_weight: float = 2.0
    word_score: float = 0.0
    probes: bool = True
    """Score evaluate-continual's probes with the beam search too (false: greedy only, where time is short)."""


@dataclass
class Experiment:
    """A recipe: the data, the backbone and the steps to run, in this order."""

    corpus: Corpus = field(default_factory=Corpus)
    backbone: str = "tiny"
    """A preset (tiny, base, large), a Hugging Face directory or a fairseq .pt."""
    trust_pickle: bool = False
    """Allow reading a fairseq .pt backbone (a pickle, which can run code)."""
    first_task: str = "en"
    """The language the backbone has learnt, when no ``pretrain`` section trains one."""
    seed: int = 0
    pretrain: Pretrain | None = None
    params: bool = False
    finetune: Finetune | None = None
    language_id: LanguageIdentification | None = None
    continual: Continual | None = None
    evaluate_continual: EvaluateContinual | None = None
    decoding: Decoding | None = None
    report: bool = False


# --- loading ---


def _build(cls: type, data: object, where: str, source: str):
    """``cls`` from the YAML mapping ``data``, recursing into dataclass-typed fields; unknown keys fail."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WavadaptError(f"{source}: {where or 'the recipe'} must be a mapping, got {data!r}")
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise WavadaptError(f"{source}: unknown key {where + '.' if where else ''}{key} (known: "
                                f"{', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _value(hints[k], v, f"{where}.{k}".lstrip("."), source) for k, v in data.items()})


def _value(hint, value: object, where: str, source: str):
    """``value`` as the field type ``hint`` wants: a section dataclass (possibly optional or in a list)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        sections = [a for a in typing.get_args(hint) if is_dataclass(a)]
        if sections and value is not None:
            return _build(sections[0], value, where, source)
        return value
    if is_dataclass(hint):
        return _build(hint, value, where, source)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and args and is_dataclass(args[0]):
        return [_build(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value or [])]
    return value


def _check_overrides(overrides: dict, cls: type, where: str, source: str, fixed: tuple[str, ...] = ()) -> None:
    """Override keys must be fields of the dataclass they override (a typo would silently do nothing), except
    the ``fixed`` ones the recipe sets elsewhere."""
    unknown = sorted(set(overrides) - {f.name for f in fields(cls) if f.name not in fixed})
    if unknown:
        raise WavadaptError(f"{source}: unknown key {where}.{unknown[0]} (not a field of {cls.__name__})")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: PyYAML (YAML 1.1) would read ``lr: 5e-5`` as a string."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+.0123456789"))


RECIPES = Path(__file__).parent / "recipes"
"""The packaged recipes: the two papers' experiments and the demo."""


def recipe_path(recipe: str | Path) -> Path:
    """A recipe file, or the packaged recipe of that name (``demo``, ``thomas2022_adapters`` ...)."""
    path = Path(recipe)
    if path.exists():
        return path
    packaged = RECIPES / f"{recipe}.yaml"
    if packaged.exists():
        return packaged
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise WavadaptError(f"{recipe}: no such recipe file, nor a packaged recipe (packaged: {known})")


def load_experiment(path: str | Path) -> Experiment:
    """Read and check a recipe: unknown keys anywhere (override mappings included) are an error naming the key
    and the file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, yaml.YAMLError) as e:
        raise WavadaptError(f"{path}: cannot read the recipe ({e})") from None
    exp = _build(Experiment, data, "", str(path))
    checks = [(exp.pretrain, "pretrain.train"), (exp.continual, "continual.train"),
              (exp.language_id, "language_id.train")]
    for section, where in checks:
        if section is not None:
            _check_overrides(section.train, TrainConfig, where, str(path))
    if exp.finetune is not None:
        _check_overrides(exp.finetune.train, TrainConfig, "finetune.train", str(path))
        _check_overrides(exp.finetune.augment, AugmentConfig, "finetune.augment", str(path))
        for i, m in enumerate(exp.finetune.methods):
            _check_overrides(m.train, TrainConfig, f"finetune.methods[{i}].train", str(path))
    if exp.evaluate_continual is not None:
        probe = exp.evaluate_continual.probe
        _check_overrides(probe, ProbeConfig, "evaluate_continual.probe", str(path),
                         fixed=("corpus", "decoder", "lms", "feature_cache"))
        _check_overrides(probe.get("augment", {}), AugmentConfig, "evaluate_continual.probe.augment", str(path))
    sources = [name for name, given in (("synth", exp.corpus.synth is not None), ("prepare", bool(exp.corpus.prepare)),
                                        ("root", exp.corpus.root is not None)) if given]
    if len(sources) > 1:
        raise WavadaptError(f"{path}: corpus takes one of synth, prepare or root, not {' and '.join(sources)}")
    if not sources and (exp.pretrain or exp.finetune or exp.continual):
        raise WavadaptError(f"{path}: corpus needs synth, prepare or root")
    if exp.evaluate_continual is not None and exp.continual is None:
        raise WavadaptError(f"{path}: evaluate_continual needs a continual section (the runs it probes)")
    return exp


# --- dry run ---

TOY_MINUTES = {"pretrain": 0.1, "train": 0.1, "dev": 0.05, "test": 0.05}
TOY_TRAIN = {"max_updates": 1, "update_freq": 1, "max_seconds_per_batch": 16.0, "warmup_updates": None,
             "validate_every": 0, "checkpoint_every": 0, "num_workers": 0, "progress": False}


def _toy_languages(exp: Experiment) -> dict[str, str]:
    """Each language of ``exp`` -> a language espeak-ng speaks in the toy corpus: itself where it can, else one
    not taken yet, so distinct languages stay distinct (Dutch then Czech -> es then de)."""
    from wavadapt.data.synth import VOICES

    languages = [exp.pretrain.language if exp.pretrain else exp.first_task, *(exp.finetune.languages if exp.finetune
                 else []), *([exp.continual.language] if exp.continual else []),
                 *((exp.evaluate_continual and exp.evaluate_continual.languages) or []),
                 *(exp.language_id.languages if exp.language_id else [])]
    spare = [v for v in VOICES if v not in languages and v != "en"] + ["en"]
    mapping = {}
    for language in dict.fromkeys(languages):
        mapping[language] = language if language in VOICES else spare.pop(0) if spare else "es"
    return mapping


def _toy_method(m: FinetuneMethod) -> FinetuneMethod:
    from wavadapt.model.backbone import PRESETS

    layers = PRESETS["tiny"]["num_hidden_layers"]  # N beyond the tiny backbone's layers is refused
    ns = [n for n in m.top_ns() if n is not None]
    top_n = list(dict.fromkeys(min(n, layers) for n in ns[:2])) if ns else None
    return replace(m, top_n=top_n, adapter_size=min(m.adapter_size, 16), freeze_updates=min(m.freeze_updates, 1),
                   train={**m.train, **TOY_TRAIN})


def toy(exp: Experiment) -> Experiment:
    """``exp`` at toy scale: a few seconds of synthetic en + the other languages (espeak-ng voices only), the
    tiny backbone (or the shipped tiny checkpoint the recipe names), 1 update per run, sweeps cut to 2 values;
    the grid's shape is kept."""
    from wavadapt.model.backbone import SHIPPED

    toy_language = _toy_languages(exp).__getitem__
    first = toy_language(exp.pretrain.language if exp.pretrain else exp.first_task)
    pretrain = exp.pretrain and replace(exp.pretrain, language=first, preset="tiny", crop_seconds=2.0,
                                        train={**exp.pretrain.train, **TOY_TRAIN})
    finetune = exp.finetune and replace(
        exp.finetune, languages=list(dict.fromkeys(map(toy_language, exp.finetune.languages))),
        methods=[_toy_method(m) for m in exp.finetune.methods], train={**exp.finetune.train, **TOY_TRAIN})
    continual = exp.continual and replace(exp.continual, language=toy_language(exp.continual.language),
                                          preset="tiny", adapter_size=16, crop_seconds=2.0, checkpoint_every=0,
                                          train={**exp.continual.train, **TOY_TRAIN})
    language_id = exp.language_id and replace(
        exp.language_id, languages=list(dict.fromkeys(map(toy_language, _identified(exp)))),
        layer=None if exp.language_id.layer is None else 1, train={**exp.language_id.train, **TOY_TRAIN})
    evaluate = exp.evaluate_continual and replace(
        exp.evaluate_continual,
        languages=exp.evaluate_continual.languages and [toy_language(x) for x in exp.evaluate_continual.languages],
        probe={**exp.evaluate_continual.probe, "max_updates": 1, "adapter_size": 16, "max_seconds_per_batch": 16.0,
               "ssl_crop_seconds": 2.0})
    languages = [first, *(finetune.languages if finetune else []), *([continual.language] if continual else []),
                 *(language_id.languages if language_id else [])]
    synth = SynthCorpus(languages=list(dict.fromkeys(["en", *languages])), minutes=TOY_MINUTES, speakers=2,
                        seed=exp.seed)
    backbone = exp.backbone if (SHIPPED / exp.backbone).is_dir() else "tiny"
    return replace(exp, corpus=Corpus(synth=synth), backbone=backbone, trust_pickle=False, first_task=first,
                   pretrain=pretrain, finetune=finetune, language_id=language_id, continual=continual,
                   evaluate_continual=evaluate)


def plan(exp: Experiment) -> list[str]:
    """What running ``exp`` does, one line per step with its run counts and sizes."""
    lines = []
    c = exp.corpus
    if c.synth is not None:
        lines.append(f"corpus: synthesise {', '.join(c.synth.languages)} ({c.synth.minutes} min per split)")
    elif c.prepare:
        lines.append("corpus: prepare " + ", ".join(f"{p.corpus} {p.language}" for p in c.prepare)
                     + " (real recordings from Debian's packages)")
    else:
        lines.append(f"corpus: {c.root}/<lang>/ splits {c.splits}")
    if exp.pretrain is not None:
        p = exp.pretrain
        lines.append(f"pretrain {p.language}: {exp.backbone} with the {p.preset} recipe, overrides {p.train}")
    if exp.params:
        lines.append(f"params: every method's parameter count for {exp.backbone}")
    if exp.finetune is not None:
        f = exp.finetune
        runs = sum(len(m.top_ns()) for m in f.methods)
        lines.append(f"finetune: {len(f.languages)} languages x {runs} runs = {len(f.languages) * runs} runs "
                     f"({', '.join(_label(m) for m in f.methods)}), overrides {f.train}")
    if exp.language_id is not None:
        lines.append(f"language-id: an identifier of {', '.join(_identified(exp))} on the backbone, overrides "
                     f"{exp.language_id.train}")
    if exp.continual is not None:
        k = exp.continual
        lines.append(f"continual {k.language}: {len(k.methods)} runs ({', '.join(k.methods)}) with the {k.preset} "
                     f"recipe, overrides {k.train}")
    if exp.evaluate_continual is not None:
        from wavadapt.training.pretrain import recipe

        k = exp.continual
        updates = recipe(k.preset, **k.train).train.max_updates
        checkpoints = updates // k.checkpoint_every if k.keep_snapshots and k.checkpoint_every else 1
        lines.append(f"evaluate-continual: fine-tune and test {checkpoints} checkpoints per method on each language "
                     f"learnt, overrides {exp.evaluate_continual.probe}")
    if exp.decoding is not None:
        d = exp.decoding
        lines.append(f"decoding: a {d.lm_order}-gram per language from the train transcripts; every test scored "
                     f"greedy and with beam {d.beam_size} + LM (weight {d.lm_weight}, word score {d.word_score})")
    if exp.report:
        lines.append("report: report/report.md")
    return lines


def _label(m: FinetuneMethod) -> str:
    ns = [n for n in m.top_ns() if n is not None]
    return (m.method + (f" N={ns[0]}..{ns[-1]} ({len(ns)} values)" if len(ns) > 1 else f" N={ns[0]}" if ns else "")
            + (" from scratch" if m.from_scratch else ""))


# --- the steps ---


def _corpus(exp: Experiment, out: Path, echo: Echo) -> Path:
    """The corpus root, synthesised or prepared into OUT/corpus first when the recipe asks for it."""
    from wavadapt.data.synth import synthesize_corpus

    if exp.corpus.prepare:
        return _prepared(exp.corpus.prepare, out / "corpus", echo)
    if exp.corpus.synth is None:
        return Path(exp.corpus.root)
    root = out / "corpus"
    if not (root / "corpus.json").is_file():
        if not _main_process():  # the other ranks would read it half-written
            raise WavadaptError(f"no corpus in {root}: synthesise it first with one process (no torchrun)")
        s = exp.corpus.synth
        echo(f"synthesising {', '.join(s.languages)} into {root}")
        synthesize_corpus(root, tuple(s.languages), minutes=s.minutes, speakers=s.speakers, seed=s.seed,
                          progress=False)
    return root


def _prepared(corpora: list[PreparedCorpus], root: Path, echo: Echo) -> Path:
    """Each real corpus prepared into ``root/<language>/`` (once: a finished one holds prepare.json)."""
    from wavadapt.data.prepare import prepare_corpus

    for p in corpora:
        if (root / p.language / "prepare.json").is_file():
            continue
        if not _main_process():
            raise WavadaptError(f"no corpus in {root / p.language}: prepare it first with one process (no torchrun)")
        echo(f"preparing {p.corpus} {p.language} into {root / p.language}")
        info = prepare_corpus(p.corpus, root / p.language, p.language, p.packages and Path(p.packages), seed=p.seed,
                              test_utterances=p.test_utterances, dev_utterances=p.dev_utterances)
        echo("  " + ", ".join(f"{split} {s['utterances']} utterances ({s['seconds'] / 60:.1f} min)"
                              for split, s in info["splits"].items()))
    return root


def _main_process() -> bool:
    """Rank 0 under torchrun (or a single process): only it scores and writes the runner's own files; the
    training steps synchronise the ranks themselves."""
    return int(os.environ.get("RANK", 0)) == 0


def _resume(run_dir: Path) -> bool:
    """Whether to continue an interrupted run from its last checkpoint; a run cut before its first checkpoint
    is removed instead (its log would otherwise append to the old one's)."""
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return True
    shutil.rmtree(run_dir, ignore_errors=True)
    return False


def _pretrain(exp: Experiment, data: Path, out: Path, echo: Echo) -> Path:
    from wavadapt.data.corpora import open_corpus
    from wavadapt.training.pretrain import build_model, pretrain, recipe

    p = exp.pretrain
    run_dir = out / "pretrain" / p.language
    if (run_dir / "pretraining.json").is_file():
        echo(f"pretrain {p.language}: done, kept")
        return run_dir
    echo(f"pretrain {p.language} -> {run_dir}")
    r = recipe(p.preset, **{"seed": exp.seed, **p.train})
    model = build_model(exp.backbone, p.language, p.preset, trust_pickle=exp.trust_pickle, seed=exp.seed)
    pretrain(model, p.language, open_corpus(data, exp.corpus.splits.pretrain, p.language), r.train, run_dir,
             crop_seconds=r.crop_seconds if p.crop_seconds is None else p.crop_seconds, min_seconds=r.min_seconds,
             keep_snapshots=p.keep_snapshots, resume=_resume(run_dir))
    return run_dir


def _params(exp: Experiment, out: Path, echo: Echo) -> None:
    from wavadapt.experiments.accounting import all_accounts, backbone_factory

    sizes = [m.adapter_size for m in exp.finetune.methods if "adapters" in m.method] if exp.finetune else []
    accounts = all_accounts(backbone_factory(exp.backbone, None, exp.trust_pickle), sizes[0] if sizes else 256)
    (out / "params.json").write_text(json.dumps({"accounts": [a.to_dict() for a in accounts]}, indent=2))
    echo(f"params: {len(accounts)} methods -> {out / 'params.json'}")


def _language_models(exp: Experiment, data: Path, out: Path, echo: Echo) -> dict[str, Path]:
    """``decoding``'s LM of every language the grid scores, built from its train split's transcripts."""
    from wavadapt.decoding.ngram import build_arpa, corpus_sentences

    languages = [*(exp.finetune.languages if exp.finetune else []),
                 *([exp.pretrain.language if exp.pretrain else exp.first_task, exp.continual.language]
                   if exp.evaluate_continual else [])]
    lms = {}
    for language in dict.fromkeys(languages):
        lms[language] = path = out / "lm" / f"{language}.arpa"
        if path.is_file() or not _main_process():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        text = corpus_sentences(data, exp.corpus.splits.train, language)
        build_arpa(text, exp.decoding.lm_order, path, discount_fallback=True)
        echo(f"lm {language}: a {exp.decoding.lm_order}-gram of {len(text)} {exp.corpus.splits.train} transcripts "
             f"-> {path}")
    return lms


def _decoder(exp: Experiment, lm: Path | None = None):
    from wavadapt.decoding import DecoderConfig

    d = exp.decoding
    return d and DecoderConfig("beam", beam_size=d.beam_size, lm=lm, lm_weight=d.lm_weight, word_score=d.word_score)


def _finetune_one(exp: Experiment, data: Path, start: str | Path, language: str, method: FinetuneMethod,
                  top_n: int | None, run_dir: Path, cache: Path | None, lms: dict[str, Path], progress: bool) -> None:
    """One `wavadapt finetune` run of the model ``start`` on the train split, validated on dev, then scored on
    test (eval.json)."""
    from wavadapt.data.corpora import open_corpus
    from wavadapt.evaluation.corpus import evaluate
    from wavadapt.interop.loading import load_asr_model
    from wavadapt.training.finetune import finetune
    from wavadapt.training.methods import MethodConfig

    f, splits = exp.finetune, exp.corpus.splits
    config = TrainConfig(**{"seed": exp.seed, **f.train, **method.train, **({} if progress else {"progress": False})})
    model = load_asr_model(start, [], trust_pickle=exp.trust_pickle, seed=exp.seed)
    if method.from_scratch:
        model = _fresh_like(model, exp.seed)
        config.extra = {"from_scratch": True}  # run.json records it: the report's label
    finetune(model, language, open_corpus(data, splits.train, language),
             MethodConfig(method.method, top_n, method.adapter_size, method.freeze_updates), config, run_dir,
             valid=open_corpus(data, splits.dev, language), augment=AugmentConfig(**f.augment),
             resume=_resume(run_dir), feature_cache=cache)
    if not _main_process():
        return
    result = evaluate(model, open_corpus(data, splits.test, language), task=language,
                      max_seconds_per_batch=config.max_seconds_per_batch, decoder=_decoder(exp, lms.get(language)))
    (run_dir / "eval.json").write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))


def _identified(exp: Experiment) -> list[str]:
    """The languages of the identifier: its own list, else the fine-tuning languages and the continual one."""
    return exp.language_id.languages or list(dict.fromkeys(
        [*(exp.finetune.languages if exp.finetune else []), *([exp.continual.language] if exp.continual else [])]))


def _language_id(exp: Experiment, data: Path, start: str | Path, out: Path, echo: Echo) -> None:
    """The identifier's run in OUT/language-id, then its test on every language's test split (eval.json)."""
    from wavadapt.data.corpora import open_corpora
    from wavadapt.evaluation.language_id import identify_corpus
    from wavadapt.interop.loading import load_asr_model
    from wavadapt.training.language_id import train_language_id

    run_dir, languages, splits = out / "language-id", _identified(exp), exp.corpus.splits
    if (run_dir / "eval.json").is_file():
        return echo("language-id: done, kept")
    echo(f"language-id: {', '.join(languages)}")
    model = load_asr_model(start, [], trust_pickle=exp.trust_pickle, seed=exp.seed)
    config = TrainConfig(**{"seed": exp.seed, **exp.language_id.train})
    train_language_id(model, languages, open_corpora(data, splits.train, languages), config, run_dir,
                      exp.language_id.layer, valid=open_corpora(data, splits.dev, languages), resume=_resume(run_dir))
    if _main_process():
        result = identify_corpus(model, open_corpora(data, splits.test, languages), config.max_seconds_per_batch)
        (run_dir / "eval.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


def _fresh_like(model, seed: int):
    """A CTC model on a backbone of ``model``'s architecture with fresh weights drawn with ``seed``."""
    import torch

    from wavadapt.model.ctc import CTCModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CTCModel(type(model.backbone)(model.backbone.config))


Steps = list[tuple[str, tuple]]
"""Named independent steps for :func:`wavadapt.experiments.workers.run_steps`: ``(name, (function, args))``."""


def _finetune(exp: Experiment, data: Path, start: str | Path, out: Path, lms: dict[str, Path], jobs: int,
              echo: Echo) -> Steps:
    steps, cache = [], _cache_root(out / "finetune") if exp.finetune.feature_cache else None
    for language in exp.finetune.languages:
        for method in exp.finetune.methods:
            for n in method.top_ns():
                name = method.method + (f"-N{n}" if n is not None else "") + ("-scratch" if method.from_scratch else "")
                run_dir = out / "finetune" / language / name
                if (run_dir / "eval.json").is_file():
                    echo(f"finetune {run_dir.relative_to(out)}: done, kept")
                    continue
                echo(f"finetune {run_dir.relative_to(out)}")
                steps.append((f"finetune {run_dir.relative_to(out)}",
                              (_finetune_one, (exp, data, start, language, method, n, run_dir, cache, lms,
                                               jobs <= 1))))
    return steps


def _continual_one(exp: Experiment, data: Path, start: str | Path, first: str, method: str, run_dir: Path,
                   progress: bool) -> None:
    """One `wavadapt continual` run of ``method`` from ``start`` (the first task's model)."""
    import torch

    from wavadapt.data.corpora import open_corpus
    from wavadapt.training.continual import ContinualConfig, prepare_continual
    from wavadapt.training.feature_cache import keyed_dir
    from wavadapt.training.pretrain import build_model, pretrain, recipe

    c = exp.continual
    r = recipe(c.preset, **{"seed": exp.seed, "checkpoint_every": c.checkpoint_every, **c.train,
                            **({} if progress else {"progress": False})})
    model = build_model(start, first, c.preset, trust_pickle=exp.trust_pickle, seed=exp.seed)
    torch.manual_seed(exp.seed)  # the new adapters and heads
    trainable, regularizer = prepare_continual(model, c.language, ContinualConfig(method, c.l2_weight, c.adapter_size))
    r.train.extra = {"continual_method": method, "l2_weight": c.l2_weight, "adapter_size": c.adapter_size}
    utterances = open_corpus(data, exp.corpus.splits.pretrain, c.language)
    cache = None
    if c.feature_cache and model.cnn_frozen:  # warm-start trains the CNN
        cache = keyed_dir(_cache_root(run_dir.parent), model, utterances)
    pretrain(model, c.language, utterances, r.train, run_dir, trainable=trainable,
             crop_seconds=r.crop_seconds if c.crop_seconds is None else c.crop_seconds, min_seconds=r.min_seconds,
             regularizer=regularizer, keep_snapshots=c.keep_snapshots, feature_cache=cache, resume=_resume(run_dir))


def _continual(exp: Experiment, data: Path, start: str | Path, first: str, out: Path, jobs: int,
               echo: Echo) -> tuple[list[Path], Steps]:
    """One `wavadapt continual` run per method from ``start`` (the first task's model): the run directories and the
    steps that are left to run."""
    c = exp.continual
    run_dirs, steps = [], []
    for method in c.methods:
        run_dir = out / "continual" / method
        run_dirs.append(run_dir)
        if (run_dir / "pretraining.json").is_file():
            echo(f"continual {method}: done, kept")
            continue
        echo(f"continual {method} ({first} -> {c.language}) -> {run_dir}")
        steps.append((f"continual {method}", (_continual_one, (exp, data, start, first, method, run_dir, jobs <= 1))))
    return run_dirs, steps


def _evaluate_continual(exp: Experiment, data: Path, runs: list[Path], out: Path, lms: dict[str, Path], jobs: int,
                        echo: Echo) -> None:
    from wavadapt.experiments.forgetting import evaluate_continual

    e, splits = exp.evaluate_continual, exp.corpus.splits
    probe = {"train_split": splits.train, "test_split": splits.test, "ssl_split": splits.dev, "seed": exp.seed,
             **e.probe, "augment": AugmentConfig(**e.probe.get("augment", {})), "lms": lms,
             "decoder": _decoder(exp) if exp.decoding and exp.decoding.probes else None,
             "feature_cache": _cache_root(out / "evaluate-continual") if e.feature_cache else None}
    report = evaluate_continual(runs, ProbeConfig(data, **probe), out / "evaluate-continual", e.target_loss,
                                e.languages, echo=echo, jobs=jobs, overwrite=True)  # the stage is redone each time
    echo(report.summary())


def _cache_root(stage_dir: Path) -> Path:
    """Where a stage's runs keep the feature caches they share."""
    return stage_dir / "feature_cache"


def _drop_cache(stage_dir: Path) -> None:
    """Remove a stage's feature caches once its runs are done (a rerun redoes only unfinished runs, which build
    what they need again): the demo's would add ~300 MB to its output."""
    if _main_process():
        shutil.rmtree(_cache_root(stage_dir), ignore_errors=True)


def _pretraining_run(backbone: str) -> Path | None:
    """The backbone as a `wavadapt pretrain` run directory (a shipped one included), else None: a run is the
    first task's checkpoint that evaluate-continual compares the continual methods against."""
    from wavadapt.model.backbone import resolve_checkpoint

    path = resolve_checkpoint(backbone)
    return path if (path / "run.json").is_file() and (path / "pretraining.json").is_file() else None


EXPERIMENT_FILE = "experiment.json"
"""The recipe an experiment folder was run with, with wavadapt's version and the command line."""


def _claim(exp: Experiment, out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding an experiment unless resumed (the same one) or overwritten; then record ``exp``."""
    steps = (EXPERIMENT_FILE, "corpus", "pretrain", "finetune", "language-id", "continual", "evaluate-continual",
             "report")
    if _main_process():
        claim(out, steps, resume=resume, overwrite=overwrite)
    recipe = json.loads(json.dumps(asdict(exp), default=str))
    if resume and (out / EXPERIMENT_FILE).is_file():
        before = json.loads((out / EXPERIMENT_FILE).read_text(encoding="utf-8")).get("experiment", {})
        changed = sorted(k for k in recipe.keys() | before.keys() if recipe.get(k) != before.get(k))
        if changed:
            raise WavadaptError(f"{out} holds another experiment (its {EXPERIMENT_FILE} differs in "
                                f"{', '.join(changed)}): --overwrite replaces it, or choose another folder")
    if _main_process():
        out.mkdir(parents=True, exist_ok=True)
        (out / EXPERIMENT_FILE).write_text(json.dumps({**provenance(), "experiment": recipe}, indent=2) + "\n",
                                           encoding="utf-8")


def run_experiment(exp: Experiment, out: str | Path, dry_run: bool = False, echo: Echo = print, jobs: int = 1,
                   resume: bool = False, overwrite: bool = False) -> Path:
    """Run every step of ``exp`` into ``out`` (toy scale with ``dry_run``, after printing the full plan), the
    independent fine-tuning runs, continual runs and probes ``jobs`` at a time
    (:mod:`wavadapt.experiments.workers`); returns ``out``.

    A folder that holds an experiment is refused unless ``resume`` (finished runs are kept, interrupted ones
    continue; only the same experiment, as its ``experiment.json`` records it) or ``overwrite``."""
    out = Path(out)
    for line in plan(exp):
        echo(("would run " if dry_run else "") + line)
    if dry_run:
        exp = toy(exp)
        echo(f"dry run at toy scale into {out}")
    _claim(exp, out, resume, overwrite)
    needs_data = exp.pretrain or exp.finetune or exp.continual or exp.language_id
    data = _corpus(exp, out, echo) if needs_data else None
    lms = _language_models(exp, data, out, echo) if exp.decoding and needs_data else {}
    first_model = _pretrain(exp, data, out, echo) if exp.pretrain else _pretraining_run(exp.backbone)
    if exp.params and _main_process():
        _params(exp, out, echo)
    if exp.language_id:
        _language_id(exp, data, first_model or exp.backbone, out, echo)
    steps = _finetune(exp, data, first_model or exp.backbone, out, lms, jobs, echo) if exp.finetune else []
    if exp.continual:
        first = exp.pretrain.language if exp.pretrain else exp.first_task
        runs, continual_steps = _continual(exp, data, first_model or exp.backbone, first, out, jobs, echo)
        steps += continual_steps
    # fine-tuning and continual runs are independent: one pool keeps every worker busy until both are done
    run_steps([step for _, step in steps], jobs, done=lambda i: echo(f"{steps[i][0]}: done"))
    _drop_cache(out / "finetune")
    _drop_cache(out / "continual")
    if exp.continual and exp.evaluate_continual:
        _evaluate_continual(exp, data, [*([first_model] if first_model else []), *runs], out, lms, jobs, echo)
        _drop_cache(out / "evaluate-continual")
    if exp.report and _main_process():
        from wavadapt.experiments.report import write_report

        echo(write_report(out).summary)
    return out
