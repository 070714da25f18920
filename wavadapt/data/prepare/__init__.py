"""Data preparation for real corpora, as Lhotse's and ESPnet's recipes do it: fetch the corpus, pair each
recording with its transcript, drop what is not transcribed speech, split without leaks, and write TSV
manifests (``<split>.tsv``) that every command reads. The corpora here are the transcribed recordings that
Debian main packages, so that they can be fetched wherever the package registries can."""
