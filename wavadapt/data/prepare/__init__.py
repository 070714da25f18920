"""Data preparation for real corpora, as Lhotse's and ESPnet's recipes do it: fetch the corpus, pair each
recording with its transcript, drop what is not transcribed speech, split without leaks, and write TSV
manifests (``<split>.tsv``) that every command reads. The corpora here are the transcribed recordings that
Debian main packages, so that they can be fetched wherever the package registries can."""

from pathlib import Path

from wavadapt.errors import WavadaptError

CORPORA = ("fillets-ng", "pocketsphinx-testdata")


def prepare_corpus(corpus: str, out: Path, language: str = "nl", packages_dir: Path | None = None, seed: int = 0,
                   test_utterances: int = 150, dev_utterances: int = 75) -> dict:
    """Prepare ``corpus`` (one of :data:`CORPORA`) into ``out``; returns what its prepare.json holds."""
    from wavadapt.data.prepare.fillets_ng import prepare_fillets_ng
    from wavadapt.data.prepare.pocketsphinx import prepare_pocketsphinx_testdata

    if corpus == "fillets-ng":
        return prepare_fillets_ng(out, language, packages_dir, seed, test_utterances, dev_utterances)
    if corpus == "pocketsphinx-testdata":
        if language != "en":
            raise WavadaptError(f"pocketsphinx-testdata is English only, not {language!r}")
        return prepare_pocketsphinx_testdata(out, packages_dir)
    raise WavadaptError(f"unknown corpus {corpus!r} (known: {', '.join(CORPORA)})")
