"""Fixed inputs and output probes shared by the backbone and fairseq loading tests."""

import torch

AUDIO = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))  # 0.5 s -> 24 frames
MASK = torch.zeros(2, 24, dtype=torch.bool)
MASK[:, 4:14] = True
# Large's structure at tiny size: pre-LN, layer norm and bias in every conv.
LARGE_STYLE = {"do_stable_layer_norm": True, "feat_extract_norm": "layer", "conv_bias": True}


def hidden(model) -> torch.Tensor:
    with torch.no_grad():
        return model(AUDIO).last_hidden_state


def pretraining_outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(AUDIO, mask_time_indices=MASK)
    return out.projected_states, out.projected_quantized_states
