"""Write a prepared corpus: one TSV manifest per split (``id``, ``path``, ``text``, ``language``, ``speaker``)
that ``open_corpus`` reads, and ``prepare.json`` with its source, sizes and what was left out."""

import json
from pathlib import Path

from wavadapt.data.audio import audio_info
from wavadapt.data.corpora import Utterance

COLUMNS = ("id", "path", "text", "language", "speaker")


def write_corpus(out: Path, splits: dict[str, list[Utterance]], language: str, source: dict,
                 dropped: dict[str, list[str]]) -> dict:
    """Write ``out/<split>.tsv`` for each split and ``out/prepare.json``; return what prepare.json holds."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, utterances in splits.items():
        seconds = 0.0
        rows = ["\t".join(COLUMNS)]
        for u in utterances:
            frames, rate, _ = audio_info(u.path)
            seconds += frames / rate
            fields = (u.id, u.path.relative_to(out).as_posix(), u.text, u.language, u.speaker or "")
            rows.append("\t".join(" ".join(str(f).split()) for f in fields))
        (out / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        sizes[split] = {"utterances": len(utterances), "seconds": round(seconds, 1),
                        "speakers": len({u.speaker for u in utterances}),
                        "groups": sorted({u.id.rsplit("/", 1)[0] for u in utterances})}
    info = {**source, "language": language, "splits": sizes,
            "dropped": {reason: {"count": len(ids), "ids": ids} for reason, ids in dropped.items()}}
    (out / "prepare.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return info
