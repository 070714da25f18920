"""The adapter registry: every task a directory holds, on one frozen backbone, added and removed while it serves.

A registry owns one CTCModel. ``load`` takes a backbone (a preset, a transformers / fairseq checkpoint, an MMS
directory with its languages, a fine-tuned checkpoint with its own head) and the task files of a directory;
``add`` loads one more task file at run time, refusing one trained on another backbone with both fingerprints
named (`checkpoint.load_task`); ``remove`` takes a task and the adapter set only it used out again. Nothing
reloads the backbone. ``tasks`` lists what is served with each task's parameters and memory.

Each task also has a default decoder: the registry's (greedy unless told otherwise), whose beam search uses the
task's own LM and lexicon where the directory holds them (``lm.<task>.arpa`` or ``.bin``, ``lexicon.<task>.txt``,
``/`` written ``--`` as in task files); ``decoder`` applies a request's choices on top. The registry's
``DecoderPool`` keeps the decoders, so each LM loads once.
"""

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from wavadapt.decoding import DecoderConfig, DecoderPool
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.adapters import adapter_config, adapter_names, adapter_parameters, remove_adapter
from wavadapt.model.checkpoint import load_task, safe_name, task_name
from wavadapt.model.ctc import CTCModel


@dataclass
class TaskInfo:
    """One served task: its adapter stack and form, vocabulary size, and its own parameters (adapter set + head)."""

    task: str
    stack: list[str]
    form: str | None
    tokens: int
    parameters: int
    bytes: int
    decoder: str
    """The task's default decoder (``DecoderConfig.describe``)."""
    lm: str | None
    """The file name of the LM its beam search uses, if it has one."""

    def to_dict(self) -> dict:
        return asdict(self)


class Registry:
    """Tasks on one backbone (see the module's docstring)."""

    def __init__(self, model: CTCModel, decoder: DecoderConfig | None = None, decoding_dir: Path | None = None):
        """``decoder``: every task's default (greedy); ``decoding_dir``: where tasks' LMs and lexicons are (see the
        module's docstring), each checked here by loading it."""
        self.model, self.default_decoder, self.pool = model, decoder or DecoderConfig(), DecoderPool()
        self.language_models: dict[str, tuple[Path | None, Path | None]] = {}
        """task -> (LM, lexicon) from ``decoding_dir``."""
        for task in self.names if decoding_dir is not None else ():
            self._find_language_model(task, decoding_dir)

    def _find_language_model(self, task: str, directory: Path) -> None:
        """Give ``task`` the LM and lexicon of ``directory`` named for it, if any, loading them (so checking them)."""
        lm = next((p for p in (directory / f"lm.{safe_name(task)}.{x}" for x in ("arpa", "bin")) if p.is_file()), None)
        lexicon = directory / f"lexicon.{safe_name(task)}.txt"
        if lm or lexicon.is_file():
            self.language_models[task] = (lm, lexicon if lexicon.is_file() else None)
            self.pool.get(self.decoder(task, "beam"), self.model.vocabularies[task])

    @classmethod
    def load(cls, backbone: str | Path, task_files: Sequence[Path] = (), *, trust_pickle: bool = False,
             vocab: Path | None = None, decoder: DecoderConfig | None = None,
             decoding_dir: Path | None = None, device: torch.device | str = "cpu") -> "Registry":
        """The backbone with its own tasks on ``device``, then ``task_files`` in order (a language adapter before a
        task on it), each under the name its file bears (:func:`file_task_name`)."""
        model = load_asr_model(backbone, [], trust_pickle=trust_pickle, vocab=vocab).to(device)
        for task_file in task_files:
            load_task(model, task_file, file_task_name(task_file))
        return cls(model, decoder, decoding_dir)

    def decoder(self, task: str, kind: str | None = None, **choices) -> DecoderConfig:
        """``task``'s decoder: the default, with ``kind`` and the beam search's ``choices`` (beam_size, lm_weight,
        word_score) where given; a beam search uses the task's LM and lexicon."""
        lm, lexicon = self.language_models.get(task, (None, None))
        kind = kind or self.default_decoder.kind
        beam = {"lm": lm, "lexicon": lexicon, **{k: v for k, v in choices.items() if v is not None}}
        return replace(self.default_decoder, kind=kind, **(beam if kind == "beam" else {}))

    @staticmethod
    def task_files(directory: Path) -> list[Path]:
        """The wavadapt task files of ``directory`` in an order that loads each after the sets it is stacked on."""
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no such directory of task files")
        pending = {f: _stacked_on(f) for f in sorted(directory.glob("adapter.*.json"))}
        order, loaded = [], set()
        while pending:
            ready = [f for f, below in pending.items() if below <= loaded]
            if not ready:  # the rest need sets no file here holds: load_task names what is missing
                ready = list(pending)
            for f in ready:
                order.append(f)
                loaded.add(file_task_name(f))
                del pending[f]
        return order

    @property
    def names(self) -> list[str]:
        return sorted(self.model.heads)

    def add(self, task_file: Path) -> str:
        """Load one more task file under the name it bears, with the LM and lexicon beside it named for it; the
        backbone and the other tasks are untouched."""
        task = load_task(self.model, task_file, file_task_name(task_file))
        self._find_language_model(task, Path(task_file).parent)
        return task

    def remove(self, task: str) -> None:
        """Drop a task, and its own adapter set unless another task's stack uses it."""
        if task not in self.model.heads:
            raise WavadaptError(f"unknown task {task!r}; the registry has {', '.join(self.names)}")
        stack = self.model.stacks.pop(task)
        del self.model.heads[task], self.model.vocabularies[task]
        self.language_models.pop(task, None)
        used = {name for s in self.model.stacks.values() for name in s}
        for name in stack:
            if name not in used and name in adapter_names(self.model.backbone):
                remove_adapter(self.model.backbone, name)
        if self.model.active == task:
            self.model.active = None

    def tasks(self) -> list[TaskInfo]:
        """Every task with what it adds to the backbone: its head and the adapter set named like it."""
        infos = []
        for task in self.names:
            own = {}
            if task in adapter_names(self.model.backbone):
                own = adapter_parameters(self.model.backbone, task)
            params = [*own.values(), *self.model.heads[task].parameters()]
            form = adapter_config(self.model.backbone, task).form if own else None
            lm = self.language_models.get(task, (None, None))[0]
            infos.append(TaskInfo(task, list(self.model.stacks[task]), form, len(self.model.vocabularies[task]),
                                  sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params),
                                  self.decoder(task).describe(), lm.name if lm else None))
        return infos

    def backbone_bytes(self) -> int:
        """Memory of the shared frozen backbone's own weights."""
        own = {id(p) for name in adapter_names(self.model.backbone)
               for p in adapter_parameters(self.model.backbone, name).values()}
        return sum(p.numel() * p.element_size() for p in self.model.backbone.parameters() if id(p) not in own)


def format_tasks(registry: Registry) -> str:
    """A table of the registry's tasks: stack, form, tokens, parameters and memory beside the backbone's, and each
    task's default decoder."""
    mb = 1e6
    lines = [f"tasks on one backbone ({registry.backbone_bytes() / mb:.1f} MB):",
             f"  {'task':<16}{'stack':<24}{'form':<9}{'tokens':>7}{'parameters':>12}{'MB':>9}  decoder"]
    for t in registry.tasks():
        decoder = t.decoder + (f" (LM {t.lm})" if t.lm and t.lm not in t.decoder else "")
        lines.append(f"  {t.task:<16}{' + '.join(t.stack) or '-':<24}{t.form or '-':<9}{t.tokens:>7}"
                     f"{t.parameters:>12,}{t.bytes / mb:>9.2f}  {decoder}")
    if (lid := registry.model.language_id) is not None:
        parameters = sum(p.numel() for p in lid.parameters())
        size = sum(p.numel() * p.element_size() for p in lid.parameters())
        lines.append(f"  {'auto':<16}{'identifier, layer ' + str(lid.layer):<24}{'-':<9}{len(lid.labels):>7}"
                     f"{parameters:>12,}{size / mb:>9.2f}  routes {', '.join(lid.labels)}")
    return "\n".join(lines)


def file_task_name(path: Path) -> str:
    """The task a file ``adapter.<name>.json`` serves: ``<name>`` (``--`` for ``/``), whatever name the task was
    trained under, so two runs' files of one language (``adapter.en.json``, ``adapter.en-top1.json``) serve side
    by side."""
    name = Path(path).name.removeprefix("adapter.").removesuffix(".json").removesuffix(".safetensors")
    return task_name(name)


def _read(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read task file ({e})") from None
    return info if isinstance(info, dict) else {}


def _stacked_on(path: Path) -> set[str]:
    return set((_read(path).get("backbone") or {}).get("stacked_on") or [])
