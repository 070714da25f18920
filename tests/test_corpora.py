import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavadapt.data.corpora import (
    Utterance,
    letters_to_words,
    open_corpora,
    open_corpus,
    read_common_voice,
    read_fairseq_manifest,
    read_librispeech,
    read_manifest,
    require_unique_ids,
    words_to_letters,
    write_fairseq_manifest,
)
from wavadapt.errors import CorpusError

CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"


def write_audio(path: Path, seconds: float, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(round(seconds * rate), np.float32), rate)


def make_librispeech(root: Path, split: str = "train-clean-100") -> Path:
    """Two speakers; chapter 19-198 is labeled, 26-495 has no trans.txt (unlabeled)."""
    split_dir = root / "LibriSpeech" / split
    for spk, chap, n in [("19", "198", 2), ("26", "495", 1)]:
        for i in range(n):
            write_audio(split_dir / spk / chap / f"{spk}-{chap}-{i:04d}.flac", 0.5 + i)
    (split_dir / "19" / "198" / "19-198-trans.txt").write_text("ignored")  # not the trans file name
    (split_dir / "19" / "198" / "19-198.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK WAS FINISHED\n"
    )
    return root / "LibriSpeech"


def make_common_voice(root: Path, lang: str = "es") -> Path:
    lang_dir = root / lang
    for name in ("a1", "a2", "a3"):
        write_audio(lang_dir / "clips" / f"common_voice_{lang}_{name}.mp3", 1.0, 48000)
    rows = [
        f'c1\tcommon_voice_{lang}_a1.mp3\tÉl dijo "hola" y se fue\t2\t0\t\t\t\t{lang}\t\n',
        f"c2\tcommon_voice_{lang}_a2.mp3\t\t0\t0\t\t\t\t{lang}\t\n",  # no sentence: unlabeled
    ]
    (lang_dir / "train.tsv").write_text(CV_HEADER + "".join(rows), encoding="utf-8")
    (lang_dir / "dev.tsv").write_text(CV_HEADER + rows[0].replace("a1", "a3"), encoding="utf-8")
    return lang_dir


def test_read_librispeech_from_librispeech_dir_split_dir_or_parent(tmp_path):
    libri = make_librispeech(tmp_path)
    utts = read_librispeech(libri, "train-clean-100")
    assert [u.id for u in utts] == ["19-198-0000", "19-198-0001", "26-495-0000"]
    assert utts[1] == Utterance(
        "19-198-0001",
        libri / "train-clean-100/19/198/19-198-0001.flac",
        "THIS LITTLE WORK WAS FINISHED",
        "en",
        speaker="19",
    )
    assert utts[2].text is None  # chapter without a trans.txt
    assert read_librispeech(libri / "train-clean-100") == utts
    assert read_librispeech(tmp_path, "train-clean-100") == utts
    assert read_librispeech(libri) == utts  # the only split


def test_read_librispeech_unknown_split_lists_the_found_ones(tmp_path):
    libri = make_librispeech(tmp_path)
    make_librispeech(tmp_path, "dev-clean")
    with pytest.raises(CorpusError, match="split 'test-other'.*found: dev-clean, train-clean-100"):
        read_librispeech(libri, "test-other")
    with pytest.raises(CorpusError, match=r"several splits \(dev-clean, train-clean-100\); choose one"):
        read_librispeech(libri)  # two splits, none called train


def test_read_common_voice_keeps_quotes_and_marks_empty_sentences_unlabeled(tmp_path):
    lang_dir = make_common_voice(tmp_path)
    utts = read_common_voice(lang_dir, "train")
    assert [u.id for u in utts] == ["common_voice_es_a1", "common_voice_es_a2"]
    assert utts[0].text == 'Él dijo "hola" y se fue'
    assert utts[0].path == lang_dir / "clips" / "common_voice_es_a1.mp3"
    assert utts[0].speaker == "c1" and utts[0].language == "es"
    assert utts[1].text is None
    assert read_common_voice(tmp_path, "train", language="es") == utts  # release dir + language
    assert [u.id for u in read_common_voice(lang_dir, "dev")] == ["common_voice_es_a3"]


def test_read_common_voice_language_falls_back_to_directory_name(tmp_path):
    lang_dir = tmp_path / "it"
    write_audio(lang_dir / "clips" / "x.mp3", 1.0)
    (lang_dir / "validated.tsv").write_text("client_id\tpath\tsentence\nc\tx.mp3\tciao\n")
    assert read_common_voice(lang_dir, "validated")[0].language == "it"
    with pytest.raises(CorpusError, match=r"train.tsv: no such Common Voice split; found: validated"):
        read_common_voice(lang_dir)


def test_fairseq_manifest_round_trip(tmp_path):
    utts = read_librispeech(make_librispeech(tmp_path))[:2]
    tsv = write_fairseq_manifest(utts, tmp_path / "manifest", "train")
    lines = tsv.read_text().splitlines()
    assert Path(lines[0]).is_dir() and lines[1].endswith("\t8000")  # fairseq: root, then path<TAB>samples
    assert (tmp_path / "manifest/train.ltr").read_text().splitlines()[0] == "N O R T H A N G E R | A B B E Y |"
    assert (tmp_path / "manifest/train.wrd").read_text().splitlines()[0] == "NORTHANGER ABBEY"
    for labels in ("ltr", "wrd"):
        back = read_fairseq_manifest(tsv, labels, language="en")
        assert [(u.id, u.path, u.text, u.num_samples) for u in back] == [
            (u.id, u.path.resolve(), u.text, sf.info(u.path).frames) for u in utts
        ]
    assert [u.text for u in read_fairseq_manifest(tsv)] == [None, None]


def test_letters_and_words_convert_both_ways():
    assert words_to_letters("HI  THERE") == "H I | T H E R E |"
    assert letters_to_words("H I | T H E R E |") == "HI THERE"


def test_fairseq_label_count_mismatch_names_both_files(tmp_path):
    utts = read_librispeech(make_librispeech(tmp_path))[:2]
    tsv = write_fairseq_manifest(utts, tmp_path, "valid")
    (tmp_path / "valid.wrd").write_text("ONLY ONE LINE\n")
    with pytest.raises(CorpusError, match=r"valid.wrd has 1 lines but .*valid.tsv lists 2 audio files"):
        read_fairseq_manifest(tsv, "wrd")


def test_write_fairseq_manifest_refuses_partly_labeled_corpora(tmp_path):
    utts = read_librispeech(make_librispeech(tmp_path))
    with pytest.raises(CorpusError, match="1 of 3 utterances have no transcript"):
        write_fairseq_manifest(utts, tmp_path, "train")


def test_read_manifest_tsv_and_jsonl(tmp_path):
    write_audio(tmp_path / "audio" / "a.wav", 1.0)
    write_audio(tmp_path / "audio" / "b.wav", 1.0)
    (tmp_path / "m.tsv").write_text("path\ttext\tlanguage\naudio/a.wav\thola\tes\naudio/b.wav\t\t\n")
    lines = [{"path": "audio/a.wav", "text": "hola", "language": "es"}, {"path": "audio/b.wav"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for name in ("m.tsv", "m.jsonl"):
        utts = read_manifest(tmp_path / name, language="de")
        assert [(u.id, u.path, u.text, u.language) for u in utts] == [
            ("audio/a", tmp_path / "audio/a.wav", "hola", "es"),
            ("audio/b", tmp_path / "audio/b.wav", None, "de"),
        ]
        assert open_corpus(tmp_path / name, language="de") == utts


def test_repeated_file_names_in_two_folders_get_two_ids(tmp_path):
    """Real corpora repeat file names across folders (a game's levels, a speaker per folder): without an id
    column the id is the path, so both files stay, cached or not."""
    for folder in ("cabin1", "cabin2"):
        write_audio(tmp_path / folder / "nl" / "k1-pap-3xkruty.wav", 0.6)
    rows = "".join(f"{f}/nl/k1-pap-3xkruty.wav\ttekst {f}\tnl\n" for f in ("cabin1", "cabin2"))
    (tmp_path / "train.tsv").write_text("path\ttext\tlanguage\n" + rows)
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"path": f"{f}/nl/k1-pap-3xkruty.wav", "text": "x"}) + "\n" for f in ("cabin1", "cabin2")))
    for name in ("train.tsv", "train.jsonl"):
        assert [u.id for u in open_corpus(tmp_path / name)] == ["cabin1/nl/k1-pap-3xkruty", "cabin2/nl/k1-pap-3xkruty"]
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "train.tsv").write_text(f"{tmp_path}\ncabin1/nl/k1-pap-3xkruty.wav\t9600\n"
                                               "cabin2/nl/k1-pap-3xkruty.wav\t9600\n")
    assert len({u.id for u in open_corpus(tmp_path / "fs" / "train.tsv")}) == 2


def test_a_repeated_id_names_the_manifest_and_both_lines(tmp_path):
    (tmp_path / "m.tsv").write_text("id\tpath\na\tx.wav\nb\ty.wav\na\tz.wav\n")
    with pytest.raises(CorpusError, match=r"m.tsv:4: utterance id 'a' \(.*z.wav\) is already the id of line 2"):
        read_manifest(tmp_path / "m.tsv")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "x.wav"}\n\n{"id": "a", "path": "y.wav"}\n')
    with pytest.raises(CorpusError, match=r"m.jsonl:3: utterance id 'a' .* line 1"):
        read_manifest(tmp_path / "m.jsonl")


def test_joined_corpora_with_one_id_for_two_files_are_refused_naming_both(tmp_path):
    a, b = Utterance("x", tmp_path / "a/x.wav", "t", "nl"), Utterance("x", tmp_path / "b/x.wav", "t", "cs")
    require_unique_ids([a])
    with pytest.raises(CorpusError, match=r"utterance id 'x' is given to .*a/x.wav and again to .*b/x.wav"):
        require_unique_ids([a, b])
    with pytest.raises(CorpusError, match=r"utterance id 'x' is given to .*a/x.wav and again to .*a/x.wav"):
        require_unique_ids([a, a])  # one file listed twice would be scored or cached twice


def test_read_manifest_without_path_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(CorpusError, match="m.jsonl:1: no 'path'"):
        read_manifest(tmp_path / "m.jsonl")


def test_open_corpus_detects_each_layout(tmp_path):
    libri = make_librispeech(tmp_path / "ls")
    lang_dir = make_common_voice(tmp_path / "cv")
    expected = read_librispeech(libri, "train-clean-100")
    assert open_corpus(libri, "train-clean-100") == expected
    assert open_corpus(libri / "train-clean-100") == expected
    assert open_corpus(lang_dir) == read_common_voice(lang_dir, "train")
    assert open_corpus(tmp_path / "cv", "dev", language="es") == read_common_voice(lang_dir, "dev")
    labeled = expected[:2]
    tsv = write_fairseq_manifest(labeled, tmp_path / "fs", "train")
    assert [u.text for u in open_corpus(tsv)] == [u.text for u in labeled]  # labels found (.wrd)
    assert open_corpus(tmp_path / "fs") == open_corpus(tsv)  # directory with train.tsv


def test_open_corpus_synthetic_root_picks_the_language(tmp_path):
    make_librispeech(tmp_path / "en")
    make_common_voice(tmp_path)
    (tmp_path / "corpus.json").write_text(json.dumps({"languages": ["en", "es"]}))
    assert open_corpus(tmp_path, "train-clean-100", language="en")[0].language == "en"
    assert open_corpus(tmp_path, language="es")[0].id == "common_voice_es_a1"
    with pytest.raises(CorpusError, match=r"several languages \(holds en, es\); choose one"):
        open_corpus(tmp_path)
    with pytest.raises(CorpusError, match=r"no language 'de' \(holds en, es\)"):
        open_corpus(tmp_path, language="de")


@pytest.mark.parametrize("make, message", [(None, "no such file or directory"), (Path.mkdir, "unknown corpus layout")])
def test_open_corpus_errors_are_one_line(tmp_path, make, message):
    path = tmp_path / "data"
    if make:
        make(path)
        (path / "notes.txt").write_text("hello")
    with pytest.raises(CorpusError, match=message) as e:
        open_corpus(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_corpus_of_several_languages_gives_each_language_its_own_ids(tmp_path):
    for language in ("nl", "cs"):  # one game's lines in two languages: the same names
        write_audio(tmp_path / language / "audio" / "poh-m-dobre.wav", 0.5)
        (tmp_path / language / "train.tsv").write_text(f"path\ttext\tlanguage\naudio/poh-m-dobre.wav\tx\t{language}\n")
    assert [u.id for u in open_corpora(tmp_path, "train", ["nl"])] == ["audio/poh-m-dobre"]
    both = open_corpora(tmp_path, "train", ["nl", "cs"])
    assert [(u.id, u.language) for u in both] == [("nl/audio/poh-m-dobre", "nl"), ("cs/audio/poh-m-dobre", "cs")]
    with pytest.raises(CorpusError, match="is given to"):  # joined by hand, the clash is refused, not overwritten
        require_unique_ids(open_corpus(tmp_path, "train", "nl") + open_corpus(tmp_path, "train", "cs"))
