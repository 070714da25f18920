"""Commands that put models to work: transcribe files, serve the OpenAI-compatible API."""

from pathlib import Path
from typing import Annotated

import typer

from wavadapt.cli.options import (
    AdapterOption,
    BeamSize,
    DecoderKind,
    DeviceOption,
    Family,
    LexiconOption,
    LmOption,
    LmWeight,
    ModelOption,
    Progress,
    RawFormatOption,
    TaskOption,
    TrustPickle,
    VocabOption,
    WordScore,
    asr_model,
    decoder_config,
    torch_device,
)
from wavadapt.cli.program import app
from wavadapt.errors import WavadaptError


@app.command("transcribe")
def transcribe_files(
    files: Annotated[list[Path], typer.Argument(help="Audio files (any format soundfile reads, any rate, mono or "
                                                "stereo; headerless PCM with --raw-format), folders of them (searched "
                                                "recursively), or .tsv/.jsonl manifests (path, and a task or language "
                                                "column to pick each file's task).")],
    model: ModelOption,
    adapter: AdapterOption = None,
    task: TaskOption = None,
    output_format: Annotated[str, typer.Option("--format", help="tsv (file TAB transcript), jsonl (with word "
                                               "times), srt or vtt (subtitles, one file per input in --out).")] = "tsv",
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout: a file (tsv, jsonl) or a directory "
                                             "(srt, vtt).")] = None,
    max_seconds_per_batch: Annotated[float | None, typer.Option(help="Padded audio seconds per batch (default: "
                                                                "12.5 on CPU, 200 on GPU).")] = None,
    chunk_seconds: Annotated[float, typer.Option(help="Longer audio is decoded in windows of this length, cut in "
                                                 "pauses.")] = 30.0,
    family: Family = None,
    trust_pickle: TrustPickle = False,
    vocab: VocabOption = None,
    raw_format: RawFormatOption = None,
    precision: Annotated[str, typer.Option(help="fp32, or bf16 / fp16 autocast on a GPU.")] = "fp32",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone (minutes to compile "
                                                "each new batch shape; for long runs).")] = False,
    progress: Progress = True,
    decoder: DecoderKind = None,
    beam_size: BeamSize = 50,
    lm: LmOption = None,
    lm_weight: LmWeight = None,
    word_score: WordScore = None,
    lexicon: LexiconOption = None,
    combine: Annotated[str, typer.Option(help="With --task auto or a+b: how rows combine tasks: uniform, lid (the "
                                         "language identifier's posterior) or entropy (EMEA, tuned per utterance).")
                       ] = "lid",
    lid_threshold: Annotated[float, typer.Option(help="With --task auto: a row whose identified language is less "
                                                 "probable than this, or has no task, runs the combination.")] = 0.5,
    live: Annotated[bool, typer.Option("--live", help="Transcribe live PCM from stdin (give - as the file; "
                                       "--raw-format s16le or f32le at any rate, default s16le:16000), e.g. from "
                                       "`arecord -f S16_LE -r 16000 -t raw`: a partial line as the text grows, a "
                                       "final one with its start and end where a pause ends an utterance; greedy "
                                       "CTC, Ctrl-C ends.")] = False,
    device: DeviceOption = "auto",
) -> None:
    """Transcribe audio files with one or many tasks.

    Files are read in length-sorted batches that may mix tasks; greedy CTC, or a beam search with an LM. Each
    unreadable file gets one error line on stderr, the others are still transcribed, and the exit status is then 1.
    """
    if live:
        pcm = _live_input(files, raw_format or "s16le:16000", output_format)  # a bad option fails before loading
        return _transcribe_live(asr_model(model, adapter, task, family, trust_pickle, vocab, device), pcm,
                                output_format)
    from wavadapt.data.audio import RawFormat, is_headerless
    from wavadapt.data.corpora import read_audio_folder, read_manifest
    from wavadapt.decoding import DecoderPool
    from wavadapt.inference import transcription
    from wavadapt.inference.formats import FORMATS, SUBTITLES, jsonl_line, subtitle_paths, subtitles, tsv_line
    from wavadapt.inference.transcription import Request, transcribe_requests
    from wavadapt.model.auto_routing import AUTO, AutoConfig

    routed = task is not None and (task == AUTO or "+" in task)  # rows routed by language, or combined
    auto = AutoConfig(combine, lid_threshold)
    if output_format not in FORMATS:
        raise WavadaptError(f"--format {output_format!r}: choose from {', '.join(FORMATS)}")
    if output_format in SUBTITLES and out is None:
        raise WavadaptError(f"--format {output_format} writes one file per input: give the directory with --out")
    raw = str(RawFormat.parse(raw_format)) if raw_format else None  # a typo fails before the model loads
    config = decoder_config(decoder, beam_size, lm, lm_weight, word_score, lexicon)
    asr = asr_model(model, adapter, task, family, trust_pickle, vocab, device)
    default = task if routed else asr.active
    requests = []
    for f in files:
        if f.suffix in (".tsv", ".jsonl") and f.is_file():
            requests += [Request(u.path, _task_of(asr, u.task, u.language), u.raw_format or raw, config)
                         for u in read_manifest(f)]
        elif f.is_dir() and (found := read_audio_folder(f)):  # a folder of audio files, searched recursively
            requests += [Request(u.path, default, None, config) for u in found]
        else:
            requests.append(Request(f, default, raw if is_headerless(f) else None, config))
    targets = subtitle_paths([r.path for r in requests], out, output_format) if output_format in SUBTITLES else {}
    pool = DecoderPool()
    for t in dict.fromkeys(r.task for r in requests if r.task in asr.vocabularies):  # a bad LM fails here, first
        pool.get(config, asr.vocabularies[t])
    if compile_model:
        transcription.compile_model(asr)
    results = transcribe_requests(asr, requests, max_seconds_per_batch, chunk_seconds,
                                  progress=progress and len(requests) > 8, precision=precision, pool=pool, auto=auto)
    good = [t for t in results if t.error is None]
    for t in results:
        if t.error is not None:
            typer.echo(f"error: {t.error}", err=True)
    if output_format in SUBTITLES:
        for t in good:
            targets[t.path].parent.mkdir(parents=True, exist_ok=True)
            targets[t.path].write_text(subtitles(t, output_format), encoding="utf-8")
            typer.echo(targets[t.path])
    else:
        text = "".join((tsv_line(t, routed) if output_format == "tsv" else jsonl_line(t)) + "\n" for t in good)
        if out is None:
            typer.echo(text, nl=False)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
    if len(good) < len(results):
        typer.echo(f"{len(results) - len(good)} of {len(results)} files could not be read", err=True)
        raise typer.Exit(1)


def _live_input(files: list[Path], raw_format: str, output_format: str):
    """The decoder of ``transcribe --live``'s stdin, once its options are checked."""
    from wavadapt.data.audio import RawFormat
    from wavadapt.inference.streaming import PcmInput

    if [str(f) for f in files] != ["-"]:
        raise WavadaptError("--live reads PCM from stdin: give - as the only file")
    if output_format not in ("tsv", "jsonl"):
        raise WavadaptError(f"--format {output_format} with --live: choose tsv or jsonl")
    raw = RawFormat.parse(raw_format)
    kind = {("s16", 1): "pcm16", ("f32", 1): "f32"}.get((raw.encoding, raw.channels))
    if kind is None or raw.endian != "le":
        raise WavadaptError(f"--raw-format {raw_format}: live audio is mono s16le or f32le")
    return PcmInput(kind, raw.sample_rate)


def _transcribe_live(asr, pcm, output_format: str) -> None:
    import json
    import sys

    from wavadapt.inference.endpointing import Speech
    from wavadapt.inference.streaming import Stream, StreamConfig, StreamEngine, transcribe_live

    frame_bytes = pcm.rate // 10 * int(pcm.dtype[-1])  # 0.1 s of <i2 or <f4 samples

    def frames():
        try:
            while frame := sys.stdin.buffer.read(frame_bytes):
                yield frame
        except KeyboardInterrupt:  # Ctrl-C ends the audio; the last utterance is still finished
            return

    for event in transcribe_live(StreamEngine(asr), Stream(asr.active, StreamConfig(), Speech()), frames(), pcm):
        if output_format == "jsonl":
            typer.echo(json.dumps(event, ensure_ascii=False))
        else:
            typer.echo(f"{event['type']}\t{event['start']:.2f}\t{event['end']:.2f}\t{event['text']}")
        sys.stdout.flush()


def _task_of(asr, task: str | None, language: str) -> str:
    """A manifest row's task: its task column, else the task named like its language (an MMS language), else the
    active one."""
    return task or (language if language in asr.heads else asr.active)


@app.command()
def serve(
    model: ModelOption,
    adapters: Annotated[Path | None, typer.Option(help="A directory of task files (adapter.<task>.json) to serve "
                                                  "beside the model's own tasks.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default: only this machine).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).")] = 8000,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its batch.")] = (
        10.0
    ),
    max_batch_seconds: Annotated[float | None, typer.Option(help="Padded audio seconds per batch (default: 12.5 "
                                                            "on CPU, 200 on GPU).")] = None,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait; more get 429 with Retry-After.")] = 256,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload (413 beyond).")] = 25.0,
    max_audio_seconds: Annotated[float, typer.Option(help="Longest audio (413 beyond).")] = 600.0,
    api_key: Annotated[str | None, typer.Option(envvar="WAVADAPT_API_KEY", help="Refuse /v1 and /metrics requests "
                                                "without Authorization: Bearer KEY (401).")] = None,
    trust_pickle: TrustPickle = False,
    decoder: Annotated[str, typer.Option("--decoder", help="Every task's default decoder: greedy, or beam (with "
                                         "the task's lm.<task>.arpa|.bin and lexicon.<task>.txt from --adapters, "
                                         "where there); a request may choose its own.")] = "greedy",
    beam_size: BeamSize = 50,
    lm_weight: LmWeight = None,
    word_score: WordScore = None,
    max_streams: Annotated[int, typer.Option(help="Live streams (/v1/stream, /v1/realtime) open at once; more are "
                                             "closed with code 1013.")] = 64,
    ssl_certfile: Annotated[Path | None, typer.Option(help="Serve https with this certificate (PEM): browsers give "
                                                      "the page's microphone to https or localhost only.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="The certificate's private key (PEM).")] = None,
    combine: Annotated[str, typer.Option(help="model=auto and a+b: how rows combine tasks (uniform, lid, entropy; "
                                         "see transcribe); an adapter.lid.json in --adapters enables auto.")] = "lid",
    lid_threshold: Annotated[float, typer.Option(help="model=auto: see transcribe.")] = 0.5,
    device: DeviceOption = "auto",
) -> None:
    """Serve tasks over an OpenAI-compatible HTTP API.

    POST /v1/audio/transcriptions and GET /v1/models as OpenAI's API, live transcription over WebSocket (OpenAI's
    Realtime at /v1/realtime, plain PCM frames at /v1/stream), /health, Prometheus /metrics and a page at / to try
    it. Requests and live streams of any task share mixed-task batches.
    """
    from wavadapt.inference.server import serve as run_server
    from wavadapt.model.auto_routing import AutoConfig

    run_server(model, adapters, host, port, trust_pickle=trust_pickle, echo=typer.echo, device=torch_device(device),
               decoder=decoder_config(decoder, beam_size, None, lm_weight, word_score, None), max_wait_ms=max_wait_ms,
               max_batch_seconds=max_batch_seconds, max_queue=max_queue, max_upload_mb=max_upload_mb,
               max_audio_seconds=max_audio_seconds, api_key=api_key, max_streams=max_streams, ssl_certfile=ssl_certfile,
               ssl_keyfile=ssl_keyfile, auto=AutoConfig(combine, lid_threshold))
