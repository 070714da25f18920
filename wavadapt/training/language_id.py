"""Training a spoken-language identifier on the frozen backbone (`wavadapt finetune --objective lid`).

Only the identifier trains (statistics pooling of one layer, a layer norm, a linear layer: `model.language_id`); the
backbone runs to that layer without autograd. Utterances need no transcript, only their language; the loss is the
cross-entropy summed over the batch's utterances.
"""

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from wavadapt.data.batching import AudioDataset, filter_by_length
from wavadapt.data.corpora import Utterance, require_unique_ids
from wavadapt.errors import WavadaptError
from wavadapt.model.checkpoint import backbone_fingerprint, save_language_id
from wavadapt.model.ctc import CTCModel
from wavadapt.model.language_id import LanguageId, check_layer
from wavadapt.training.loop import Distributed, TrainConfig, Trainer
from wavadapt.training.run_folder import claim


class Identifier(nn.Module):
    """The model as the training loop runs it: waveforms -> identification scores."""

    def __init__(self, model: CTCModel):
        super().__init__()
        self.model = model

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.identify(waveforms, attention_mask)


def default_layer(model: CTCModel) -> int:
    """The middle of the encoder, where wav2vec 2.0's layers hold language best (its top is shaped by the
    pre-training objective): also below the top-N adapters of the papers' best method, so routing shares it."""
    return model.backbone.config.num_hidden_layers // 2


def train_language_id(model: CTCModel, languages: list[str], train: list[Utterance], config: TrainConfig,
                      out_dir: Path, layer: int | None = None, valid: list[Utterance] | None = None,
                      resume: bool = False, overwrite: bool = False, min_seconds: float = 0.5,
                      max_seconds: float = 30.0, data_source: dict | None = None) -> list[dict]:
    """Train ``model.language_id`` over ``languages`` on ``train`` (each utterance's ``language``); validate by
    accuracy on ``valid``; write ``adapter.lid.*`` into ``out_dir``. Returns the training log rows."""
    from wavadapt.evaluation.language_id import identify_corpus

    out_dir = Path(out_dir)
    if Distributed.from_env().main:
        claim(out_dir, resume=resume, overwrite=overwrite)
    layer = default_layer(model) if layer is None else layer
    check_layer(model.backbone, layer)
    missing = sorted(set(languages) - {u.language for u in train})
    if missing:
        raise WavadaptError(f"no training utterances in {', '.join(missing)}: each language to identify needs some")
    chosen = [u for u in train if u.language in languages]
    kept, unreadable, outside = filter_by_length(chosen, min_seconds, min(max_seconds, config.max_seconds_per_batch))
    if not kept:
        raise WavadaptError(f"no usable training utterance: {len(unreadable)} unreadable, {len(outside)} outside "
                            f"{min_seconds}-{max_seconds} s")
    torch.manual_seed(config.seed)
    ref = next(model.parameters())
    model.language_id = LanguageId(model.hidden_size, languages, layer).to(device=ref.device, dtype=ref.dtype)
    model.requires_grad_(False)
    model.language_id.requires_grad_(True)
    params = {f"model.language_id.{k}": p for k, p in model.language_id.named_parameters()}
    require_unique_ids(kept)  # ids key the labels
    target = {u.id: languages.index(u.language) for u in kept}

    def objective(net: nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        scores = net(batch["waveforms"], batch["attention_mask"])
        labels = torch.tensor([target[i] for i in batch["ids"]], device=scores.device)
        loss = nn.functional.cross_entropy(scores.float(), labels, reduction="sum")
        return loss, len(labels), {}

    def validate(identifier: Identifier) -> dict[str, float]:
        return {"accuracy": identify_corpus(identifier.model, valid).accuracy}

    trainer = Trainer(Identifier(model), params, objective, AudioDataset(kept, normalize=model.normalize_waveforms,
                                                                         seed=config.seed), config, out_dir,
                      validate=validate if valid else None, languages=[u.language for u in kept])
    trainer.start({
        "task": "lid", "objective": "lid", "languages": languages, "layer": layer, "train": asdict(config),
        "backbone": {**(model.source or {}), "fingerprint": backbone_fingerprint(model.backbone)},
        "data": data_source, "train_utterances": len(kept), "dropped_by_length": len(outside),
        "skipped": {"unreadable": unreadable, "outside_length": outside}}, resume)
    history = trainer.train()
    if trainer.env.main:
        model.eval()
        save_language_id(model, out_dir)
    return history
