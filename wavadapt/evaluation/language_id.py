"""How well a language identifier names a corpus's languages: accuracy, per language, and the confusion matrix."""

import logging
from dataclasses import asdict, dataclass

import numpy as np

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.data.batching import AudioDataset, filter_by_length, make_dataloader
from wavadapt.data.corpora import Utterance, require_unique_ids
from wavadapt.errors import WavadaptError
from wavadapt.inference.engine import evaluating
from wavadapt.model.ctc import CTCModel

log = logging.getLogger(__name__)


@dataclass
class LanguageIdResult:
    labels: list[str]
    """The identifier's languages, the order of the matrix's rows and columns."""
    confusion: list[list[int]]
    """``confusion[i][j]``: utterances in language i identified as j."""
    skipped: int = 0
    """Utterances that could not be read, or in a language the identifier does not know."""

    @property
    def total(self) -> int:
        return int(np.sum(self.confusion))

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion)) / max(1, self.total)

    def per_language(self) -> dict[str, float]:
        return {label: row[i] / max(1, sum(row)) for i, (label, row) in enumerate(zip(self.labels, self.confusion,
                                                                                        strict=True))}

    def summary(self) -> str:
        """Accuracy, per language, and the confusion matrix (rows: the true language; columns: identified as)."""
        width = max(6, *map(len, self.labels)) + 2
        lines = [f"language identification: {self.accuracy:.2%} of {self.total} utterances"
                 + (f" ({self.skipped} skipped)" if self.skipped else "")]
        lines += [f"  {label}: {rate:.2%}" for label, rate in self.per_language().items()]
        lines.append("  true \\ found".ljust(width + 2) + "".join(label.rjust(width) for label in self.labels))
        lines += ["  " + label.ljust(width) + "".join(str(n).rjust(width) for n in row)
                  for label, row in zip(self.labels, self.confusion, strict=True)]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy, "utterances": self.total,
                "per_language": self.per_language()}


def identify_corpus(model: CTCModel, utterances: list[Utterance], max_seconds_per_batch: float = 100.0
                    ) -> LanguageIdResult:
    """Identify every utterance's language in length-sorted padded batches and count against its ``language``."""
    if model.language_id is None:
        raise WavadaptError("the model has no language identifier: load its task file (adapter.lid.json)")
    labels = model.language_id.labels
    known = filter_by_length([u for u in utterances if u.language in labels]).kept  # lengths from the headers
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    require_unique_ids(known)  # ids key the true languages
    truth = {u.id: labels.index(u.language) for u in known}
    longest = max((u.num_samples for u in known), default=0) / SAMPLE_RATE
    device, seen = next(model.parameters()).device, 0
    dataset = AudioDataset(known, normalize=model.normalize_waveforms)
    with evaluating(model):
        for batch in make_dataloader(dataset, max(max_seconds_per_batch, longest + 1), shuffle=False):
            if batch is None:
                continue
            found = model.identify(batch["waveforms"].to(device), batch["attention_mask"].to(device)).argmax(-1)
            for i, j in zip(batch["ids"], found.tolist(), strict=True):
                confusion[truth[i], j] += 1
            seen += len(batch["ids"])
    if foreign := sorted({u.language for u in utterances} - set(labels)):
        log.warning("utterances in languages the identifier does not know (%s) left out", ", ".join(foreign))
    return LanguageIdResult(labels, confusion.tolist(), skipped=len(utterances) - seen)

