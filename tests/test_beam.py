"""Beam search decoding (wavadapt.decoding): agreement with greedy and pyctcdecode, LM and lexicon, bad files."""

import jiwer
import numpy as np
import pytest
import torch

from wavadapt.data.text import Vocabulary
from wavadapt.decoding import (
    DecoderConfig,
    DecodingFileError,
    LanguageModelError,
    LexiconError,
    decode_in_processes,
    log_probs,
    make_decoder,
    texts,
)
from wavadapt.model.ctc import CTCOutput

VOCAB = Vocabulary.build(["the cat sat on a hat", "teh bat"])
CAPITALS = Vocabulary([t.upper() if len(t) == 1 else t for t in VOCAB.tokens])

ARPA = """\\data\\
ngram 1=7
ngram 2=4

\\1-grams:
-99\t<s>\t-0.5
-1.0\t</s>
-2.0\t<unk>
-0.8\tthe\t-0.3
-1.0\tcat\t-0.3
-1.0\ton\t-0.3
-4.0\tteh\t-0.3

\\2-grams:
-0.1\t<s> the
-0.1\tthe cat
-0.2\tcat </s>
-0.5\tcat on

\\end\\
"""


@pytest.fixture
def arpa(tmp_path):
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    return path


def random_path(rng, vocab: Vocabulary, frames: int) -> list[int]:
    """A CTC path with runs of blanks, delimiters and letters (repeats with and without a blank between)."""
    letters = [i for i, t in enumerate(vocab.tokens) if t.isalpha()]
    path = []
    while len(path) < frames:
        token = rng.choice([vocab.blank_id, vocab.word_delimiter_id, *letters], p=None)
        path += [int(token)] * int(rng.integers(1, 4))
    return path[:frames]


def path_logits(rng, vocab: Vocabulary, path: list[int], peak: float = 4.0) -> np.ndarray:
    """Noisy logits whose best path is mostly ``path``; special tokens (which pyctcdecode would spell) unlikely."""
    logits = rng.normal(0.0, 1.0, (len(path), len(vocab))).astype(np.float32)
    logits[np.arange(len(path)), path] += peak
    for t in ("<s>", "</s>", "<unk>"):
        logits[:, vocab.tokens.index(t)] = -30.0
    return logits


def output_of(*logits: np.ndarray) -> CTCOutput:
    """A padded batch of per-utterance logits."""
    frames = max(len(x) for x in logits)
    batch = np.full((len(logits), frames, logits[0].shape[1]), 0.0, np.float32)
    for i, x in enumerate(logits):
        batch[i, : len(x)] = x
    return CTCOutput(torch.from_numpy(batch), torch.tensor([len(x) for x in logits]))


def spell(vocab: Vocabulary, text: str, frames_per_letter: int = 2) -> list[int]:
    """A clean CTC path for ``text``: each letter for some frames, then a blank."""
    path = [vocab.blank_id]
    for i in vocab.encode(text):
        path += [i] * frames_per_letter + [vocab.blank_id]
    return path


@pytest.mark.parametrize("vocab", [VOCAB, CAPITALS], ids=["lowercase", "capitals"])
def test_beam_of_one_without_lm_is_greedy(vocab):
    rng = np.random.default_rng(0)
    greedy, beam = (make_decoder(DecoderConfig(kind, beam_size=1), vocab) for kind in ("greedy", "beam"))
    for _ in range(200):
        path = random_path(rng, vocab, int(rng.integers(1, 60)))
        logits = path_logits(rng, vocab, path, peak=float(rng.uniform(0, 4)))
        best = logits.argmax(-1).tolist()
        expected = vocab.ctc_words(best)
        assert beam.decode(output_of(logits)) == greedy.decode(output_of(logits)) == [expected]
        assert texts([expected]) == [vocab.ctc_decode(best)]
    assert all(w == w.lower() for w, _, _ in expected)


def test_beam_without_lm_agrees_with_pyctcdecode():
    """Both sum the alignments of a prefix (flashlight with log_add); on CTC-like logits where greedy is often wrong
    they agree but for near-ties, which flashlight's beam (of states, not prefixes) may break the other way."""
    from pyctcdecode import build_ctcdecoder

    labels = ["" if i == VOCAB.blank_id else " " if t == "|" else t for i, t in enumerate(VOCAB.tokens)]
    reference = build_ctcdecoder(labels)
    beam = make_decoder(DecoderConfig("beam", beam_size=16, beam_threshold=1000.0, log_add=True), VOCAB)
    rng = np.random.default_rng(1)
    agree, not_greedy = 0, 0
    for _ in range(100):
        logits = path_logits(rng, VOCAB, random_path(rng, VOCAB, int(rng.integers(5, 50))), peak=4.0)
        (emissions,) = log_probs(output_of(logits), VOCAB)
        expected = " ".join(reference.decode(emissions, beam_width=16, beam_prune_logp=-1000.0,
                                             token_min_logp=-1000.0).split())
        (got,) = texts([beam.decode_emissions(emissions)])
        agree += got == expected
        not_greedy += expected != VOCAB.ctc_decode(emissions.argmax(-1).tolist())
        assert ctc_log_likelihood(emissions, got) > ctc_log_likelihood(emissions, expected) - 0.5
    assert agree >= 95 and not_greedy >= 5


def ctc_log_likelihood(emissions: np.ndarray, text: str) -> float:
    """log p(text | emissions), summed over its alignments."""
    labels = torch.tensor([VOCAB.encode(text)])
    return -torch.nn.functional.ctc_loss(torch.from_numpy(emissions)[:, None], labels, torch.tensor([len(emissions)]),
                                         torch.tensor([labels.shape[1]]), reduction="sum").item()


def ambiguous_logits(vocab: Vocabulary) -> np.ndarray:
    """Acoustically "teh cat" by a small margin over "the cat": frames 2-3 lean to e then h."""
    path = spell(vocab, "teh cat", frames_per_letter=1)
    logits = np.full((len(path), len(vocab)), -8.0, np.float32)
    logits[np.arange(len(path)), path] = 4.0
    e, h = vocab.encode("e")[0], vocab.encode("h")[0]
    logits[3, [e, h]] = [4.0, 3.6]  # "e" slightly better than "h" ...
    logits[5, [h, e]] = [4.0, 3.6]  # ... then "h" than "e"
    return logits


@pytest.mark.parametrize("vocab", [VOCAB, CAPITALS], ids=["lowercase", "capitals"])
@pytest.mark.parametrize("with_lexicon", [False, True], ids=["lexicon-free", "lexicon"])
def test_lm_overrules_a_slightly_better_acoustic_alternative(arpa, tmp_path, vocab, with_lexicon):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("the\tt h e |\ncat c a t\nteh\n")  # torchaudio's spelling, a plain one, and none
    logits = ambiguous_logits(vocab)
    no_lm = DecoderConfig("beam", beam_size=8, lexicon=lexicon if with_lexicon else None)
    assert texts(make_decoder(DecoderConfig("greedy"), vocab).decode(output_of(logits))) == ["teh cat"]
    assert texts(make_decoder(no_lm, vocab).decode(output_of(logits))) == ["teh cat"]
    with_lm = DecoderConfig("beam", beam_size=8, lm=arpa, lm_weight=1.0, lexicon=no_lm.lexicon)
    assert texts(make_decoder(with_lm, vocab).decode(output_of(logits))) == ["the cat"]


SENTENCES = ["the cat sat on a hat", "a cat sat on the bat", "the bat sat on a cat", "on the hat sat a bat"]


def test_lexicon_free_lm_corrects_noisy_letters_without_running_words_together(tmp_path):
    """On noisy logits of LM-likely sentences, the word 3-gram (from `wavadapt lm`'s estimator) repairs most of
    greedy's letter errors. Without the unknown-word penalty it would run the words together, one long unknown word
    costing the LM less than the true words' scores (here 0.57 WER against greedy's 0.71)."""
    from wavadapt.decoding.ngram import build_arpa

    arpa = tmp_path / "3gram.arpa"
    build_arpa(SENTENCES * 5, 3, arpa, discount_fallback=True)
    rng = np.random.default_rng(5)
    truth, logits = [], []
    for _ in range(12):
        truth.append(str(rng.choice(SENTENCES)))
        path = [VOCAB.blank_id]
        for i in VOCAB.encode(truth[-1]):
            path += [i] * int(rng.integers(1, 4)) + [VOCAB.blank_id] * int(rng.integers(1, 3))
        logits.append(path_logits(rng, VOCAB, path, peak=3.0))
    greedy = texts(make_decoder(DecoderConfig("greedy"), VOCAB).decode(output_of(*logits)))
    beam = texts(make_decoder(DecoderConfig("beam", beam_size=20, lm=arpa, lm_weight=2.0), VOCAB)
                 .decode(output_of(*logits)))
    greedy_wer, beam_wer = jiwer.wer(truth, greedy), jiwer.wer(truth, beam)
    assert greedy_wer > 0.3 and beam_wer < greedy_wer / 3
    assert sum(len(t.split()) for t in beam) == pytest.approx(sum(len(t.split()) for t in truth), rel=0.1)


def test_decoders_share_a_loaded_lm_and_read_a_rewritten_file_again(arpa):
    """Decoders that differ in weights share one KenLM (a server's requests load nothing); a file rewritten in place
    is not served from that cache."""
    one, two = (make_decoder(DecoderConfig("beam", beam_size=8, lm=arpa, lm_weight=w), VOCAB) for w in (1.0, 1.5))
    assert one._lm._kenlm is two._lm._kenlm
    assert texts(one.decode(output_of(ambiguous_logits(VOCAB)))) == ["the cat"]
    arpa.write_text(ARPA.replace("-0.8\tthe\t", "-4.0\tthe\t").replace("-4.0\tteh\t", "-0.5\tteh\t")
                    .replace("<s> the", "<s> teh") + "\n")
    again = make_decoder(DecoderConfig("beam", beam_size=8, lm=arpa, lm_weight=1.0), VOCAB)
    assert again._lm._kenlm is not one._lm._kenlm
    assert texts(again.decode(output_of(ambiguous_logits(VOCAB)))) == ["teh cat"]


def test_lm_in_capitals_serves_a_capitals_vocabulary(tmp_path):
    upper = tmp_path / "upper.arpa"
    upper.write_text("\n".join(line if line.startswith(("\\", "ngram")) else line.upper().replace("<S>", "<s>")
                               .replace("</S>", "</s>").replace("<UNK>", "<unk>") for line in ARPA.splitlines()))
    config = DecoderConfig("beam", beam_size=8, lm=upper, lm_weight=1.0)
    assert texts(make_decoder(config, CAPITALS).decode(output_of(ambiguous_logits(CAPITALS)))) == ["the cat"]


def test_lexicon_decoding_emits_only_lexicon_words_in_order_within_the_utterance(arpa, tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("the t h e\ncat\non\na\n")
    words = {"the", "cat", "on", "a"}
    rng = np.random.default_rng(3)
    decoders = [make_decoder(DecoderConfig("beam", beam_size=10, lexicon=lexicon, lm=lm), VOCAB) for lm in (None, arpa)]
    emitted = set()
    for _ in range(40):
        frames = int(rng.integers(1, 80))
        logits = path_logits(rng, VOCAB, random_path(rng, VOCAB, frames), peak=2.0)
        for decoder in decoders:
            (decoded,) = decoder.decode(output_of(logits))
            assert {w for w, _, _ in decoded} <= words
            assert_spans_ordered(decoded, frames)
            emitted |= {w for w, _, _ in decoded}
    assert emitted, "random logits never decoded to a word"


def test_lexicon_words_end_at_a_word_break(tmp_path):
    """A lexicon word ends with ``|`` (as fairseq's and torchaudio's spellings do): a bonus per word cannot split
    "the" into "t he" where the speech has no break, a word's span covers all its letters' frames (ended before the
    last frame of "cat" when words ended at their last letter), and the last word needs no break."""
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("the\nt\nhe\ncat\n")
    path = spell(VOCAB, "the cat", frames_per_letter=2)
    logits = np.full((len(path), len(VOCAB)), -8.0, np.float32)
    logits[np.arange(len(path)), path] = 4.0
    decoder = make_decoder(DecoderConfig("beam", beam_size=20, lexicon=lexicon, word_score=5.0), VOCAB)
    assert decoder.decode(output_of(logits)) == [[("the", 1, 9), ("cat", 13, 21)]]


def assert_spans_ordered(decoded, frames: int) -> None:
    previous_end = 0
    for _, start, end in decoded:
        assert previous_end <= start < end <= frames
        previous_end = end


def test_word_spans_of_a_known_utterance(arpa):
    path = spell(VOCAB, "the cat", frames_per_letter=2)  # blank, t t, blank, h h, ... (3 frames per letter)
    logits = np.full((len(path), len(VOCAB)), -8.0, np.float32)
    logits[np.arange(len(path)), path] = 4.0
    for config in (DecoderConfig("beam"), DecoderConfig("beam", lm=arpa)):
        assert make_decoder(config, VOCAB).decode(output_of(logits)) == [[("the", 1, 9), ("cat", 13, 21)]]


def test_lexicon_free_lm_word_spans_are_ordered_on_random_logits(arpa):
    rng = np.random.default_rng(4)
    decoder = make_decoder(DecoderConfig("beam", beam_size=10, lm=arpa, word_score=0.5), VOCAB)
    for _ in range(40):
        frames = int(rng.integers(1, 80))
        (decoded,) = decoder.decode(output_of(path_logits(rng, VOCAB, random_path(rng, VOCAB, frames), peak=2.0)))
        assert_spans_ordered(decoded, frames)


def test_batches_respect_lengths_and_processes_agree_with_one():
    rng = np.random.default_rng(5)
    logits = [path_logits(rng, VOCAB, random_path(rng, VOCAB, n)) for n in (30, 7, 52, 1, 18)]
    config = DecoderConfig("beam", beam_size=8)
    in_batch = make_decoder(config, VOCAB).decode(output_of(*logits))
    alone = [make_decoder(config, VOCAB).decode(output_of(x))[0] for x in logits]
    assert in_batch == alone
    emissions = log_probs(output_of(*logits), VOCAB)
    assert decode_in_processes(config, VOCAB, emissions, workers=2) == alone


BAD_LMS = {  # file contents, and what the error must say, for language models flashlight should never see
    "junk.arpa": (b"hello world\n", "not an ARPA file"),
    "binary.arpa": (bytes(range(256)) * 4, "not UTF-8"),
    "truncated.arpa": (ARPA.split("\\2-grams:")[0].encode(), "end with \\end\\"),
    "miscounted.arpa": (ARPA.replace("ngram 1=7", "ngram 1=9").encode(), "promises 9 1-grams"),
    "empty.arpa": (b"", "not an ARPA file"),
}


@pytest.mark.parametrize("name", [*BAD_LMS, "missing.arpa"])
def test_bad_language_models_give_one_line_errors_naming_the_file(tmp_path, name):
    path = tmp_path / name
    if name in BAD_LMS:
        path.write_bytes(BAD_LMS[name][0])
    with pytest.raises(LanguageModelError) as error:
        make_decoder(DecoderConfig("beam", lm=path), VOCAB)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert (BAD_LMS[name][1] if name in BAD_LMS else "No such file") in message


def test_a_broken_kenlm_binary_is_refused_cleanly(tmp_path):
    fake = tmp_path / "lm.bin"
    fake.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0" + bytes(64))
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("cat\n")
    with pytest.raises(LanguageModelError, match="does not list its words"):
        make_decoder(DecoderConfig("beam", lm=fake), VOCAB)
    with pytest.raises(LanguageModelError, match="KenLM cannot load it") as error:
        make_decoder(DecoderConfig("beam", lm=fake, lexicon=lexicon), VOCAB)
    assert str(fake) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("contents", "complaint"), [
    ("the t h e\ncat c a x\n", "lexicon.txt:2: 'cat' is spelt with ['x']"),
    ("bé\n", "'bé' is spelt with ['é']"),
    ("\n\n", "has no words"),
    (None, "cannot read lexicon"),
])
def test_bad_lexicons_give_one_line_errors_naming_the_file(tmp_path, contents, complaint):
    lexicon = tmp_path / "lexicon.txt"
    if contents is not None:
        lexicon.write_text(contents)
    with pytest.raises(LexiconError) as error:
        make_decoder(DecoderConfig("beam", lexicon=lexicon), VOCAB)
    assert complaint in str(error.value) and str(lexicon) in str(error.value) and "\n" not in str(error.value)
    assert isinstance(error.value, DecodingFileError)


def test_config_is_checked():
    with pytest.raises(Exception, match="choose greedy or beam"):
        DecoderConfig("viterbi")
    with pytest.raises(Exception, match="needs the beam search"):
        DecoderConfig("greedy", lm="lm.arpa")
