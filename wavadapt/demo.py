"""`wavadapt demo`: the end-to-end path that exists so far, on a freshly synthesised corpus.

Synthesise English (LibriSpeech layout) and Spanish (Common Voice layout) speech, check both corpora,
build their CTC vocabularies, then stream the labeled splits through the length-bucketed pipeline into
a tiny wav2vec 2.0 carrying an English and a Spanish adapter set, routing every utterance of a
mixed-language batch to its own language's adapters.
"""

import time
from pathlib import Path

import torch

from wavadapt.data.batching import AudioDataset, filter_by_length, make_dataloader
from wavadapt.data.check import check_corpus
from wavadapt.data.corpora import open_corpus
from wavadapt.data.synth import synthesize_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.model.adapters import AdapterConfig, add_adapter, set_active
from wavadapt.model.backbone import build_backbone, describe, format_description

LANGUAGES = ("en", "es")
MINUTES = {"pretrain": 1.0, "train": 1.0, "dev": 0.5, "test": 0.5}


def run_demo(out_dir: Path, seed: int = 0, echo=print) -> dict:
    """Run the demo into ``out_dir`` (the corpus is reused when it is already there); return its figures."""
    corpus_dir = out_dir / "corpus"
    if not (corpus_dir / "corpus.json").exists():
        echo(f"1. synthesising {', '.join(LANGUAGES)} speech into {corpus_dir}")
        synthesize_corpus(corpus_dir, LANGUAGES, minutes=MINUTES, seed=seed)
    else:
        echo(f"1. reusing the corpus in {corpus_dir}")

    echo("2. checking the labeled splits and building the vocabularies")
    utterances, vocabularies = [], {}
    for language in LANGUAGES:
        train = open_corpus(corpus_dir, "train", language)
        vocabularies[language] = vocab = Vocabulary.build([u.text for u in train], language)
        vocab.save_json(out_dir / f"vocab.{language}.json")
        report = check_corpus(train, vocab)
        echo(f"   {language}: {report.summary().splitlines()[0]}; {len(vocab)} tokens")
        utterances += train

    echo("3. a tiny wav2vec 2.0 with an adapter set per language")
    torch.manual_seed(seed)
    model = build_backbone("tiny").eval()
    for language in LANGUAGES:
        add_adapter(model, language, AdapterConfig(size=64))
    echo("   " + format_description(describe(model)).replace("\n", "\n   "))

    echo("4. streaming mixed-language, length-bucketed batches through the model")
    kept, dropped = filter_by_length(utterances, min_seconds=0.5, max_seconds=20)
    loader = make_dataloader(AudioDataset(kept), max_seconds_per_batch=30, seed=seed)
    by_id = {u.id: u.language for u in kept}
    seconds = frames = 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            set_active(model, per_sample=[by_id[i] for i in batch["ids"]])
            out = model(batch["waveforms"], attention_mask=batch["attention_mask"]).last_hidden_state
            seconds += batch["attention_mask"].sum().item() / 16000
            frames += out.shape[0] * out.shape[1]
    elapsed = time.perf_counter() - start
    padding = loader.batch_sampler.padding_fraction
    figures = {"utterances": len(kept), "dropped": dropped, "audio_seconds": seconds,
               "seconds_per_second": seconds / elapsed, "padding_fraction": padding}
    echo(f"   {len(kept)} utterances ({seconds:.0f} s of audio) in {len(loader)} batches, "
         f"{seconds / elapsed:.0f}x real time on {torch.get_num_threads()} threads, padding {padding:.1%}")
    return figures
