"""Text normalisation, CTC vocabularies (HF vocab.json / fairseq dict parity) and fortune sentences."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import Wav2Vec2CTCTokenizer

from wavadapt.data import sentences
from wavadapt.data.sentences import MAX_WORDS, MIN_WORDS, fortune_sentences, load_sentences
from wavadapt.data.text import ALPHABETS, Normalized, Vocabulary, VocabularyError, normalize, normalize_text
from wavadapt.data.verbalize import spells_numbers
from wavadapt.errors import CorpusError


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        (
            "en",
            "Don’t stop—the café’s “best” well-known dogs' toys!",
            "don't stop the cafe's best well known dogs toys",
        ),
        ("en", "'Quoted,' she said.", "quoted she said"),
        ("es", "¿Qué tal, señor Núñez? ¡Un pingüino!", "qué tal señor núñez un pingüino"),
        ("es", "L'été à Paris", "lété a paris"),  # no apostrophe in Spanish; à -> a, é stays
        ("de", "Die Straße ist schön; Äpfel & Öl.", "die straße ist schön äpfel und öl"),
        ("it", "L'uomo è più forte, perché no? Città!", "l'uomo è più forte perché no città"),
        ("xx", "Ça va, Ωmega-3?", "ça va ωmega"),  # unknown language: any unicode letter, digits dropped
        ("nl", "Ideeën voor één ruïne, zo'n \"mooie\" dag... – ja!", "ideeen voor een ruine zo'n mooie dag ja"),
        ("cs", "Žluťoučký kůň úpěl ďábelské ódy.", "žluťoučký kůň úpěl ďábelské ódy"),
        ("hi", "नमस्ते दुनिया!", "नमस्ते दुनिया"),  # combining vowel signs survive
    ],
)
def test_normalize_text(language, text, expected):
    assert normalize_text(text, language) == expected


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        ("en", "Mr. Smith paid $5 at 3pm!", "mr smith paid five dollars at three pm"),
        ("en", "I paid 5 dollars at 3pm for 2 cards & a CD", "i paid five dollars at three pm for two cards and a cd"),
        ("en", "The 3rd of 1,000,000 is 3.25%", "the third of one million is three point two five percent"),
        ("en", "Call 0800 or 21913271", "call zero eight zero zero or two one nine one three two seven one"),
        ("nl", "Het schip ligt bij steiger 5: Poseidon 737, F2 of 3,5 € ...", "het schip ligt bij steiger vijf "
         "poseidon zevenhonderdzevenendertig f twee of drie komma vijf euro"),
        ("nl", "1.000.000 mensen", "een miljoen mensen"),
        ("cs", "V roce 1998 za 20 €.", "v roce tisíc devětset devadesát osm za dvacet eur"),
    ],
)
def test_numbers_and_symbols_are_spelt_out(language, text, expected):
    result = normalize(text, language)
    assert (result.text, result.dropped, result.foreign) == (expected, "", "")


def test_what_normalisation_drops_is_reported():
    """Nothing vanishes without a word: symbols without a spoken form, digits in a language num2words cannot spell,
    and letters outside the alphabet are named; punctuation, which nobody says, is not."""
    assert not spells_numbers("xx")
    result = normalize("Tokyo 東京 ©, «quoted» — done…", "en")
    assert (result.text, result.dropped, result.foreign) == ("tokyo quoted done", "©", "京東")
    assert normalize("Ik zei: Привет!", "nl").foreign == "веипрт"
    assert normalize("x 12 ω", "xx") == Normalized("x ω", "12", "")


def test_a_mixed_script_transcript_never_enlarges_the_vocabulary(caplog):
    for language in ("nl", "xx", None):  # a known alphabet, an unknown one (script shares), no normalisation
        vocab = Vocabulary.build(["hallo wereld"] * 150 + ["zij zei привет"], language)
        assert vocab.tokens[5:] == list("leadhorw"), language
        assert "1 transcripts with letters outside the language's" in caplog.text
    # A script that is the corpus's own is kept, whatever the language.
    assert "п" in Vocabulary.build(["привет мир"] * 10, "ru").tokens


def test_normalized_text_stays_in_alphabet():
    for language, alphabet in ALPHABETS.items():
        out = normalize_text("Ñandú Übermaß ÀÉÎÕÜ çà 42 x_y <b> Ærø", language)
        assert set(out) <= set(alphabet) | {" "}, language


def test_vocabulary_order_and_round_trip():
    vocab = Vocabulary.build(["Hello, world!", "hello again"], language="en")
    assert vocab.tokens[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"]
    # Descending counts (l 5, o 3, a e h 2, ...), ties in alphabetical order.
    assert vocab.tokens[5:] == ["l", "o", "a", "e", "h", "d", "g", "i", "n", "r", "w"]
    assert vocab.counts["|"] == 2 + 2  # one per space and one per line: fairseq's .ltr lines end with "|"
    assert vocab.blank_id == 0 and len(vocab) == len(set(vocab.tokens))
    ids = vocab.encode("hello world")
    assert ids[5] == vocab.word_delimiter_id
    assert vocab.decode(ids) == "hello world"
    assert vocab.encode("hex") == [vocab.tokens.index("h"), vocab.tokens.index("e"), vocab.unk_id]
    assert vocab.oov_chars("hex ça") == {"x", "ç"}


def test_ctc_decode_collapses_repeats_and_drops_blanks():
    vocab = Vocabulary.build(["hello world"])
    h, e, l, o, sp = (vocab.tokens.index(c) for c in "helo|")  # noqa: E741
    ids = [0, h, h, e, 0, l, l, 0, l, o, o, sp, sp, 0, 0, vocab.tokens.index("w"), o, 0]
    assert vocab.ctc_decode(ids) == "hello wo"


def test_vocab_json_matches_huggingface_tokenizer(tmp_path):
    texts = ["El niño comió pingüino.", "¿Qué más da?", "Señor, ¡ya está!"]
    vocab = Vocabulary.build(texts, language="es")
    path = tmp_path / "vocab.json"
    vocab.save_json(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {t: i for i, t in enumerate(vocab.tokens)}
    tokenizer = Wav2Vec2CTCTokenizer(str(path), word_delimiter_token="|")
    sentence = normalize_text("¿Qué niño comió más?", "es")
    assert tokenizer(sentence).input_ids == vocab.encode(sentence)
    assert tokenizer.pad_token_id == vocab.blank_id and tokenizer.unk_token_id == vocab.unk_id
    ids = [0, *vocab.encode(sentence)[:4], 0, 0, *vocab.encode(sentence)[4:], 0]
    assert tokenizer.decode(ids) == vocab.ctc_decode(ids) == sentence
    assert Vocabulary.load_json(path) == Vocabulary(vocab.tokens)


def test_fairseq_dict_round_trip(tmp_path):
    vocab = Vocabulary.build(["guten tag", "gute nacht"], language="de")
    path = tmp_path / "dict.ltr.txt"
    vocab.save_fairseq_dict(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "| 4" and lines[1] == "t 4"  # fairseq adds <s> <pad> </s> <unk> itself
    assert len(lines) == len(vocab) - 4
    assert Vocabulary.from_fairseq_dict(path) == vocab


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("vocab.json", "{not json", "cannot read vocab.json"),
        ("vocab.json", '{"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 5}', "ids must be 0..4"),
        ("vocab.json", '{"<s>": 0, "</s>": 1, "<unk>": 2, "|": 3, "a": 4}', "no blank '<pad>'"),
        ("vocab.json", '{"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4}', "no word delimiter"),
        ("dict.ltr.txt", "| 10\ne 5 extra\n", "dict.ltr.txt:2: expected '<token> <count>'"),
        ("dict.ltr.txt", "| 10\ne 5\ne 3\n", "duplicate tokens ['e']"),
    ],
)
def test_malformed_vocabulary_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    load = Vocabulary.load_json if name.endswith(".json") else Vocabulary.from_fairseq_dict
    with pytest.raises(VocabularyError) as error:
        load(path)
    assert str(path) in str(error.value) and message in str(error.value)


FORTUNE_FILE = """\
A critic is a bundle of biases held loosely together by a sense of taste.
		-- Whitney Balliett
%
The quick brown fox was tired.  He slept all day long!  Then he woke up.
%
      _____
     /     \\
    | () () |
     \\  ^  /
      |||||
%
The cat said zzzzz and went to sleep.
%
Aaaah, what a day this is!
%
I have 3 apples and I want more of them.
%
Kirk: Scotty, beam me up right now.
Scotty: I cannae do it, captain.
%
He is unbiased
-- he hates all creative people equally.
%
Mr. Smith went to Washington today.  Go to www.example.com for the rest of it.
%
NASA sent a rocket to the moon again.
%
"Are you the foreman around here?" he asked the man.
"""


def test_fortune_cleaning():
    assert fortune_sentences(FORTUNE_FILE, "en") == [
        "A critic is a bundle of biases held loosely together by a sense of taste.",
        "The quick brown fox was tired.",
        "He slept all day long!",
        "Then he woke up.",
        "He is unbiased -- he hates all creative people equally.",
    ]


def test_italian_fortunes_get_their_accents_back():
    text = "E' difficile, pero' e' vero perche' la citta' e' piu' bella.\n%\nNe voglio un po' anche io.\n"
    assert fortune_sentences(text, "it") == [
        "È difficile, però è vero perché la città è più bella.",
        "Ne voglio un po' anche io.",
    ]


@pytest.mark.parametrize(("language", "minimum"), [("en", 5000), ("es", 1000), ("de", 1000), ("it", 1000)])
def test_installed_fortunes_give_many_clean_sentences(language, minimum):
    sentences = load_sentences(language)
    assert len(sentences) >= minimum
    normalized = [normalize_text(s, language) for s in sentences]
    assert len(set(normalized)) == len(normalized)
    assert all(MIN_WORDS <= len(n.split()) <= MAX_WORDS for n in normalized)
    assert not any(c.isdigit() or c in '"“”„«»@/' for s in sentences for c in s)
    assert load_sentences(language) == sentences  # deterministic (and cached)


def test_missing_fortune_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(sentences, "FORTUNES_DIR", tmp_path)
    sentences._load.cache_clear()
    try:
        with pytest.raises(CorpusError, match="apt-get install fortunes-de"):
            load_sentences("de")
    finally:
        sentences._load.cache_clear()
    with pytest.raises(CorpusError, match="no sentence source for language 'xx'"):
        load_sentences("xx")


def test_a_checkpoints_own_order_and_special_tokens_are_kept(tmp_path):
    # HF's run_speech_recognition_ctc.py puts [UNK] and [PAD] last; fairseq's Dictionary puts <s> (its blank) first.
    path = tmp_path / "vocab.json"
    path.write_text('{"a": 0, "b": 1, "|": 2, "[UNK]": 3, "[PAD]": 4}', encoding="utf-8")
    vocab = Vocabulary.load_json(path, blank="[PAD]", unk="[UNK]")
    assert (vocab.blank_id, vocab.unk_id, vocab.word_delimiter_id) == (4, 3, 2)
    assert vocab.ctc_decode([0, 0, 4, 0, 2, 1, 3, 4]) == "aa b"  # a blank parts repeats; [UNK] is never spelt
    assert vocab.encode("ab c") == [0, 1, 2, 3]
    fairseq = Vocabulary(["<s>", "<pad>", "</s>", "<unk>", "|", "a"], blank="<s>")
    assert fairseq.blank_id == 0 and fairseq.ctc_decode([5, 1, 0, 5, 2, 3]) == "aa"
    with pytest.raises(VocabularyError, match="no blank"):
        Vocabulary.load_json(path)


def test_a_vocabulary_of_capitals_reads_and_writes_normalised_lowercase_text():
    vocab = Vocabulary(["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "H", "'"])  # wav2vec2-base-960h's kind
    assert vocab.encode("the eth'") == [6, 7, 5, 4, 5, 6, 7, 8]
    assert vocab.ctc_decode([6, 7, 0, 5, 4, 5]) == "the e"
    assert vocab.oov_chars("the cat") == {"c", "a"}
    mixed = Vocabulary(["<pad>", "<s>", "</s>", "<unk>", "|", "a", "B"])  # not all capitals: taken as it is
    assert mixed.encode("ab") == [5, 3] and mixed.ctc_decode([5, 6]) == "aB"


def test_ctc_words_give_the_greedy_text_with_each_words_frames():
    vocab = Vocabulary(["<pad>", "<s>", "</s>", "<unk>", "|", "h", "i", "a"])
    path = [0, 5, 5, 0, 6, 4, 4, 0, 7, 0, 7, 0, 3, 4]  # "hi" over frames 1-4, "aa" over 8-10, then <unk> and |
    assert vocab.ctc_words(path) == [("hi", 1, 5), ("aa", 8, 11)]
    assert " ".join(w for w, _, _ in vocab.ctc_words(path)) == vocab.ctc_decode(path)
    assert vocab.ctc_words([0, 0, 4]) == []


@given(st.lists(st.integers(0, 8), max_size=60))
def test_ctc_words_always_spell_ctc_decode(path):
    vocab = Vocabulary(["<pad>", "<s>", "</s>", "<unk>", "|", "H", "I", "A", "'"])
    words = vocab.ctc_words(path)
    assert " ".join(w for w, _, _ in words) == vocab.ctc_decode(path)
    assert all(0 <= start < end <= len(path) for _, start, end in words)
    assert all(a[2] <= b[1] for a, b in zip(words, words[1:], strict=False))
