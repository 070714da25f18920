"""Decoding CTC output to timed words: greedy, or beam search with a KenLM language model and a lexicon."""

from wavadapt.decoding.beam import (
    BeamSearchDecoder,
    DecodedWords,
    DecoderConfig,
    DecoderPool,
    GreedyDecoder,
    decode_in_processes,
    log_probs,
    make_decoder,
    texts,
)
from wavadapt.decoding.files import DecodingFileError, LanguageModelError, LexiconError

__all__ = [
    "BeamSearchDecoder",
    "DecodedWords",
    "DecoderConfig",
    "DecoderPool",
    "DecodingFileError",
    "GreedyDecoder",
    "LanguageModelError",
    "LexiconError",
    "decode_in_processes",
    "log_probs",
    "make_decoder",
    "texts",
]
