"""`wavadapt prepare`: real corpora from Debian packages, on .deb files built here in the packages' own layout
(dpkg-deb, as Debian builds them) and on the real pocketsphinx-testdata package fetched with apt-get."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavadapt.cli import app
from wavadapt.data.audio import read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.data.prepare.fillets_ng import prepare_fillets_ng
from wavadapt.data.prepare.pocketsphinx import prepare_pocketsphinx_testdata
from wavadapt.errors import CorpusError

GAME = "usr/share/games/fillets-ng"

# level -> [(id, font, english, dutch or None)]; k1-pap-3xkruty is in two levels (one line: one split), the
# share lines are in script/share and sound/share/<sub>.
SCRIPTS = {
    "cabin1": [("k1-pap-3xkruty", "font_parrot", "Crrruel Captain Silverrrr...", "Rrrottige kapitein Silverrrr..."),
               ("k1-m-a", "font_small", 'He said \\"no\\".', 'Hij zei: \\"nee\\".')],
    "cabin2": [("k1-pap-3xkruty", "font_parrot", "Crrruel Captain Silverrrr...", "Rrrottige kapitein Silverrrr..."),
               ("k2-v-b", "font_big", "Look at pier #5.", "Kijk naar steiger 5.")],
    "city": [("vit-m-c", "font_small", "Welcome.", "Welkom."), ("vit-v-d", "font_big", "Again.", "Nog eens."),
             ("vit-v-e", "font_big", "Untranslated.", None)],
    "reef": [("ree-m-f", "font_small", "Reef.", "Rif."), ("ree-x-g", "font_white", "Splash.", "Plons.")],
    "share": [("cil-m-h", "font_small", "A job to do.", "Hier is werk.")],
}
SOUND = {"cabin1": ["k1-pap-3xkruty", "k1-m-a"], "cabin2": ["k1-pap-3xkruty", "k2-v-b"],
         "city": ["vit-m-c", "vit-v-d", "vit-v-e", "vit-m-unknown"], "reef": ["ree-m-f", "ree-x-g"],
         "share/border": ["cil-m-h"]}


def _lua(lines: list, dutch: bool) -> str:
    out = []
    for line_id, font, english, text in lines:
        out.append(f'dialogId("{line_id}", "{font}", "{english}")\n')
        if dutch and text is not None:
            out.append(f'dialogStr("{text}")\n')
        out.append("\n")
    return "".join(out)


def _deb(root: Path, name: str, out: Path) -> None:
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 1.0.1-1.1\nArchitecture: all\n"
                                             "Maintainer: test <t@example.org>\nDescription: test fixture\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out / f"{name}_1.0.1-1.1_all.deb")],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def fillets_debs(tmp_path_factory) -> Path:
    """fillets-ng-data (scripts) and fillets-ng-data-nl (recordings) as .deb files in the real layout."""
    tmp, debs = tmp_path_factory.mktemp("fillets"), tmp_path_factory.mktemp("debs")
    data, nl = tmp / "data", tmp / "nl"
    for level, lines in SCRIPTS.items():
        script = data / GAME / "script" / level
        script.mkdir(parents=True)
        name = "border_dialogs" if level == "share" else "dialogs"
        (script / f"{name}_nl.lua").write_text(_lua(lines, dutch=True), encoding="utf-8")
        (script / f"{name}_en.lua").write_text(_lua(lines, dutch=False), encoding="utf-8")
    rng = np.random.default_rng(0)
    for level, ids in SOUND.items():
        for i, line_id in enumerate(ids):
            path = nl / GAME / "sound" / level / "nl" / f"{line_id}.ogg"
            path.parent.mkdir(parents=True, exist_ok=True)
            rate = 44100 if i % 2 else 22050
            sf.write(path, 0.1 * rng.standard_normal(int(rate * (0.6 + 0.1 * i))), rate, format="OGG",
                     subtype="VORBIS")
    _deb(data, "fillets-ng-data", debs)
    _deb(nl, "fillets-ng-data-nl", debs)
    return debs


def test_fillets_ng_pairs_recordings_with_lines_and_splits_by_level(fillets_debs, tmp_path):
    info = prepare_fillets_ng(tmp_path / "nl", "nl", fillets_debs, test_utterances=3, dev_utterances=1)
    splits = {s: open_corpus(tmp_path / "nl", s, "nl") for s in ("train", "dev", "test")}
    utterances = [u for us in splits.values() for u in us]
    # Every transcribed speech clip once, the same file name in two levels as two utterances.
    assert sorted(u.id for u in utterances) == sorted(
        f"{level}/{i}" for level, ids in SOUND.items() for i in ids if i not in ("vit-v-e", "vit-m-unknown", "ree-x-g"))
    assert info["dropped"] == {"no transcript": {"count": 2, "ids": ["city/vit-m-unknown", "city/vit-v-e"]},
                               "sound effect": {"count": 1, "ids": ["reef/ree-x-g"]}}
    by_id = {u.id: u for u in utterances}
    assert by_id["cabin1/k1-m-a"].text == 'Hij zei: "nee".'
    assert by_id["cabin2/k2-v-b"].speaker == "big" and by_id["share/border/cil-m-h"].text == "Hier is werk."
    # Whole levels per split; the two levels sharing a line in one split.
    level_split = {}
    for split, us in splits.items():
        for u in us:
            assert level_split.setdefault(u.id.rsplit("/", 1)[0], split) == split
    assert level_split["cabin1"] == level_split["cabin2"]
    assert len(splits["test"]) >= 3 and len(splits["dev"]) >= 1
    assert {s: v["utterances"] for s, v in info["splits"].items()} == {s: len(us) for s, us in splits.items()}
    assert info["packages"] == {"fillets-ng-data": "1.0.1-1.1", "fillets-ng-data-nl": "1.0.1-1.1"}
    # The audio is copied out of the packages and reads through the audio gate.
    assert all(u.path.is_relative_to(tmp_path / "nl" / "audio") and read_audio(u.path).size for u in utterances)
    json.loads((tmp_path / "nl" / "prepare.json").read_text())


def test_fillets_ng_split_is_seeded_and_english_reads_the_dialogue_ids(fillets_debs, tmp_path):
    a = prepare_fillets_ng(tmp_path / "a", "nl", fillets_debs, seed=3, test_utterances=3, dev_utterances=1)
    b = prepare_fillets_ng(tmp_path / "b", "nl", fillets_debs, seed=3, test_utterances=3, dev_utterances=1)
    assert a["splits"] == b["splits"]
    assert (tmp_path / "a" / "test.tsv").read_text() == (tmp_path / "b" / "test.tsv").read_text().replace(
        str(tmp_path / "b"), str(tmp_path / "a"))
    with pytest.raises(CorpusError, match="no fillets-ng-data-cs_.*deb .*apt-get download fillets-ng-data-cs"):
        prepare_fillets_ng(tmp_path / "cs", "cs", fillets_debs)


def test_prepare_command_prints_the_splits_and_refuses_an_unknown_corpus(fillets_debs, tmp_path, capsys):
    app(["prepare", "fillets-ng", "--language", "nl", "--out", str(tmp_path / "nl"), "--packages", str(fillets_debs),
         "--test-utterances", "3", "--dev-utterances", "1"], standalone_mode=False)
    out = capsys.readouterr().out
    assert "left out (sound effect): 1" in out and "fillets-ng-data-nl 1.0.1-1.1" in out
    with pytest.raises(Exception, match="unknown corpus 'timit'"):
        app(["prepare", "timit", "--out", str(tmp_path / "t")], standalone_mode=False)


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt-get to fetch the package")
def test_pocketsphinx_testdata_is_real_read_english(tmp_path):
    """The real package, fetched as `make demo` fetches it: ten clips, 16 kHz, with their Sphinx transcripts."""
    info = prepare_pocketsphinx_testdata(tmp_path / "ps")
    test = open_corpus(tmp_path / "ps", "test", "en")
    assert len(test) == 10 and info["splits"]["test"]["utterances"] == 10
    by_id = {u.id: u for u in test}
    assert by_id["librivox/sense_and_sensibility_01_austen_64kb-0880"].text == "he was not an ill disposed young man"
    assert by_id["cards/001"].text == "ten of clubs"
    assert all(sf.info(u.path).samplerate == 16000 for u in test)
    assert 30 < info["splits"]["test"]["seconds"] < 60


def test_a_recipe_prepares_its_real_corpora_once_and_the_report_says_they_are_real(fillets_debs, tmp_path):
    from wavadapt.experiments.grid import _corpus, load_experiment
    from wavadapt.experiments.report import write_report

    recipe = tmp_path / "real.yaml"
    recipe.write_text(f"corpus:\n  prepare:\n    - {{corpus: fillets-ng, language: nl, test_utterances: 3, "
                      f"dev_utterances: 1, packages: {fillets_debs}}}\nfinetune: {{languages: [nl]}}\n")
    exp, said = load_experiment(recipe), []
    root = _corpus(exp, tmp_path / "exp", said.append)
    assert root == tmp_path / "exp" / "corpus" and said[0].startswith("preparing fillets-ng nl")
    assert len(open_corpus(root, "test", "nl")) >= 3
    assert _corpus(exp, tmp_path / "exp", said.append) == root and len(said) == 2  # prepared once
    report = write_report(tmp_path / "exp")
    test_size = json.loads((root / "nl" / "prepare.json").read_text())["splits"]["test"]["utterances"]
    assert f"nl: real speech (fillets-ng recordings), test split {test_size} utterances" in report.findings[0]
    assert "| nl | **real speech** | fillets-ng recordings (fillets-ng-data 1.0.1-1.1" in report.markdown
    recipe.write_text(recipe.read_text().replace("corpus:\n", "corpus:\n  synth: {languages: [en]}\n"))
    with pytest.raises(Exception, match="corpus takes one of synth, prepare or root, not synth and prepare"):
        load_experiment(recipe)
