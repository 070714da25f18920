"""pocketsphinx-testdata (Debian main): 47 s of 16 kHz read English with transcripts, a small real test set.

Two sets in ``usr/share/pocketsphinx/test/data``: ``librivox/`` (five sentences of a LibriVox reading of
*Sense and Sensibility*) and ``cards/`` (five sequences of playing cards), each with a file list and
Sphinx transcripts (``<s> text </s> (id)``).
"""

import re
import shutil
import tempfile
from pathlib import Path

from wavadapt.data.corpora import Utterance
from wavadapt.data.prepare.debian import unpack_packages
from wavadapt.data.prepare.manifests import write_corpus
from wavadapt.errors import CorpusError

PACKAGE = "pocketsphinx-testdata"
DATA = Path("usr/share/pocketsphinx/test/data")
SETS = {"librivox": "transcription", "cards": "cards.transcription"}
_SPHINX_LINE = re.compile(r"^(?:<s>)?(.*?)(?:</s>)?\s*\(([^()]+)\)\s*$")


def prepare_pocketsphinx_testdata(out: Path, packages_dir: Path | None = None) -> dict:
    """Fetch the package and write ``out/test.tsv`` (English) with the audio in ``out/audio/<set>/``."""
    with tempfile.TemporaryDirectory(prefix="wavadapt-pocketsphinx-") as tmp:
        versions = unpack_packages([PACKAGE], Path(tmp), packages_dir)
        data = Path(tmp) / DATA
        utterances, dropped = [], {}
        for name, transcripts in SETS.items():
            for utt_id, text in _sphinx_transcripts(data / name / transcripts).items():
                audio = data / name / f"{utt_id}.wav"
                if not audio.is_file():
                    dropped.setdefault("no audio", []).append(f"{name}/{utt_id}")
                    continue
                target = out / "audio" / name / audio.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(audio, target)
                utterances.append(Utterance(f"{name}/{utt_id}", target, text, "en", speaker=name))
    source = {"corpus": PACKAGE, "license": "BSD-2-Clause (CMU Sphinx, Debian main)", "packages": versions,
              "split": "test only"}
    return write_corpus(out, {"test": utterances}, "en", source, dropped)


def _sphinx_transcripts(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot read ({e})") from None
    texts = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _SPHINX_LINE.match(line.strip())
        if match is None:
            raise CorpusError(f"{path}:{n}: expected a Sphinx transcript '<s> text </s> (id)', got {line!r}")
        texts[match.group(2)] = " ".join(match.group(1).split())
    return texts
