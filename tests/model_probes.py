"""Fixed inputs, output probes and configs shared by the model tests."""

import torch

AUDIO = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))  # 0.5 s -> 24 frames
MASK = torch.zeros(2, 24, dtype=torch.bool)
MASK[:, 4:14] = True
# Large's structure at tiny size: pre-LN, layer norm and bias in every conv.
LARGE_STYLE = {"do_stable_layer_norm": True, "feat_extract_norm": "layer", "conv_bias": True}
# Deterministic pre-training forwards: every dropout and layer drop off.
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  feat_quantizer_dropout=0.0, layerdrop=0.0)


def hidden(model) -> torch.Tensor:
    with torch.no_grad():
        return model(AUDIO).last_hidden_state


def pretraining_outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(AUDIO, mask_time_indices=MASK)
    return out.projected_states, out.projected_quantized_states


def task_logits(model, task: str | None = None) -> torch.Tensor:
    """A CTCModel's logits on AUDIO for ``task`` (default: the active one)."""
    if task is not None:
        model.activate(task)
    with torch.no_grad():
        return model(AUDIO).logits


def perturb(params, scale: float = 0.1) -> None:
    """Stand in for training: move every given tensor well away from its initial value."""
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * scale)
