"""Commands that inspect and convert models: params, info, export."""

from pathlib import Path
from typing import Annotated

import typer

from wavadapt.cli.options import (
    AdapterForm,
    Family,
    ModelOption,
    TrustPickle,
)
from wavadapt.cli.program import app
from wavadapt.errors import WavadaptError


@app.command()
def params(
    model: Annotated[
        str, typer.Argument(help="A preset (tiny, base, large), a Hugging Face checkpoint directory or a fairseq .pt.")
    ],
    method: Annotated[
        str | None, typer.Option(help="full, top-n-full, adapters (default), top-n-adapters or head-only.")
    ] = None,
    top_n: Annotated[int | None, typer.Option(help="N of the top-n methods: the top N transformer layers.")] = None,
    adapter_size: Annotated[int, typer.Option(help="Adapter bottleneck size.")] = 256,
    adapter_form: AdapterForm = "houlsby",
    vocab_size: Annotated[
        int | None, typer.Option(help="CTC output tokens (default 32: fairseq's LibriSpeech letter dictionary).")
    ] = None,
    vocab: Annotated[Path | None, typer.Option(help="vocab.json or dict.ltr.txt whose size sets the head.")] = None,
    family: Family = None,
    trust_pickle: TrustPickle = False,
    all_methods: Annotated[
        bool, typer.Option("--all", help="Every method, with both top-N methods for N = 1 .. layers.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the account as JSON.")] = False,
) -> None:
    """Count a fine-tuning method's trainable parameters.

    Total, trainable and frozen parameters, as the papers count them (adapters: 9.2% of wav2vec 2.0 Base).
    """
    import json

    from wavadapt.data.text import Vocabulary
    from wavadapt.experiments.accounting import (
        LIBRISPEECH_VOCAB_SIZE,
        all_accounts,
        backbone_factory,
        format_account,
        format_table,
        method_account,
    )
    from wavadapt.training.methods import MethodConfig

    if all_methods and (method is not None or top_n is not None):
        raise WavadaptError("--all lists every method: drop --method and --top-n")
    if vocab is not None and vocab_size is not None:
        raise WavadaptError("give --vocab or --vocab-size, not both")
    config = None if all_methods else MethodConfig(method or "adapters", top_n=top_n, adapter_size=adapter_size,
                                                   adapter_form=adapter_form)
    if vocab is not None:
        tokens = Vocabulary.load(vocab)
    else:
        tokens = vocab_size or LIBRISPEECH_VOCAB_SIZE
    factory = backbone_factory(model, family, trust_pickle)
    if all_methods:
        accounts = all_accounts(factory, adapter_size, tokens, adapter_form)
        output = {"accounts": [a.to_dict() for a in accounts]} if json_output else format_table(accounts, model)
    else:
        account = method_account(factory, config, tokens)
        output = account.to_dict() if json_output else format_account(account, model)
    typer.echo(json.dumps(output, indent=2) if json_output else output)


@app.command()
def info(
    model: Annotated[
        str, typer.Argument(help="A preset (tiny, base, large), a Hugging Face checkpoint directory or a fairseq .pt.")
    ],
    family: Family = None,
    pretraining: Annotated[
        bool, typer.Option("--pretraining", help="Include wav2vec 2.0's quantizer and projections.")
    ] = False,
    trust_pickle: TrustPickle = False,
    adapters: Annotated[Path | None, typer.Option(help="A directory of task files to list with the model's own "
                                                  "tasks, each with its parameters and memory.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Describe a backbone and list the tasks it serves.

    The architecture and its parameters by component, and each task it serves (its own, a fine-tuned or MMS
    checkpoint's, and those of --adapters) with its size.
    """
    import json

    import torch

    from wavadapt.model.backbone import (
        PRESETS,
        build_backbone,
        build_pretraining_model,
        describe,
        format_description,
        load_backbone,
        load_pretraining_model,
    )

    if model in PRESETS:
        family = family or "wav2vec2"
        if pretraining and family != "wav2vec2":
            raise WavadaptError(f"--pretraining needs the wav2vec2 family, not {family}")
        with torch.device("meta"):  # counting needs shapes only: even large builds instantly
            built = build_pretraining_model(model) if pretraining else build_backbone(model, family)
    elif family is not None:
        raise WavadaptError("--family applies to presets only: a checkpoint names its own family")
    else:
        load = load_pretraining_model if pretraining else load_backbone
        built = load(model, trust_pickle=trust_pickle)
    summary = describe(built)
    if adapters is not None or model not in PRESETS:
        from wavadapt.inference.registry import Registry, format_tasks

        registry = Registry.load(model, Registry.task_files(adapters) if adapters else [], trust_pickle=trust_pickle,
                                 decoding_dir=adapters)  # as `serve` finds each task's LM
        summary["tasks"] = [t.to_dict() for t in registry.tasks()]
        summary["backbone_bytes"] = registry.backbone_bytes()
    text = format_description(summary)
    if summary.get("tasks"):
        text += "\n" + format_tasks(registry)
    typer.echo(json.dumps(summary, indent=2) if json_output else text)


@app.command()
def export(
    model: ModelOption,
    out: Annotated[Path, typer.Option(help="Output: a directory (mms), a .pt file (fairseq) or a .onnx file.")],
    files: Annotated[list[Path] | None, typer.Argument(help="Task files (adapter.<task>.json) to export, loaded in "
                                                        "order onto --model.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="mms: transformers' MMS layout (mms-form tasks; the first "
                                     "is the main language). fairseq: a fairseq 0.12 checkpoint of the backbone, "
                                     "or of one task without adapters (a fine-tuned Wav2VecCtc + dict.ltr.txt). "
                                     "onnx: one task (backbone, adapters, head) as an ONNX graph for onnxruntime, "
                                     "its vocabulary in OUT's .vocab.json.")] = (
        "mms"
    ),
    task: Annotated[list[str] | None, typer.Option(help="Also export this task of the model itself (e.g. a "
                                                   "language of an MMS directory); repeat.")] = None,
    family: Family = None,
    trust_pickle: TrustPickle = False,
) -> None:
    """Write tasks as MMS, fairseq or ONNX files.

    --format mms writes a folder that transformers' Wav2Vec2ForCTC.from_pretrained(DIR, target_lang=...) and
    load_adapter(...) load; --format fairseq a checkpoint fairseq's load_model_ensemble_and_task loads; --format onnx
    a graph onnxruntime runs, with dynamic batch and length.
    """
    from wavadapt.interop.fairseq import export_fairseq
    from wavadapt.interop.loading import load_asr_model
    from wavadapt.interop.mms import export_mms
    from wavadapt.model.checkpoint import load_task

    if fmt not in ("mms", "fairseq", "onnx"):
        raise WavadaptError(f"--format {fmt!r}: choose mms, fairseq or onnx (a Houlsby-form adapter task stays a "
                            "wavadapt task file for transformers and fairseq: neither has a module for it)")
    if fmt == "onnx":
        from wavadapt.interop.onnx import check_onnx_name

        check_onnx_name(out)  # before the model loads
    asr = load_asr_model(model, [], trust_pickle=trust_pickle, family=family)
    tasks = [*(task or []), *(load_task(asr, f) for f in files or [])]
    if fmt == "onnx":
        from wavadapt.interop.onnx import export_onnx

        if len(tasks) != 1:
            raise WavadaptError(f"an ONNX graph holds one task; got {', '.join(tasks) or 'none'}")
        typer.echo(f"{export_onnx(asr, tasks[0], out)}: {tasks[0]} with its adapters, and its vocabulary")
        return
    if fmt == "fairseq":
        if len(tasks) > 1:
            raise WavadaptError(f"a fairseq checkpoint holds one task; got {', '.join(tasks)}")
        typer.echo(f"{export_fairseq(asr, tasks[0] if tasks else None, out)}: {tasks[0] if tasks else 'backbone'}")
        return
    if not tasks:
        raise WavadaptError("nothing to export: give task files or --task")
    typer.echo(f"{export_mms(asr, tasks, out)}: {', '.join(tasks)} in the MMS layout")
