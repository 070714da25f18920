"""Omnilingual ASR CTC checkpoints (Meta, 2025: wav2vec 2.0 CTC models for 1,600+ languages) as a backbone with one
task, in transformers' own layout (``OmniASRForCTC.save_pretrained``: config.json of model_type ``omniasr_ctc``,
the weights, and its tokenizer).

The Omnilingual encoder is wav2vec 2.0's pre-LN one (transformers builds it from Wav2Vec2 attention, layer and
layer-norm conv modules): a layer-norm CNN with bias, the feature projection's layer norm and projection, a
positional convolution whose last output frame is dropped (wav2vec 2.0's same-pad for an even kernel), pre-LN
layers and a layer norm after them. So it loads into transformers' ``Wav2Vec2Model`` with ``do_stable_layer_norm``,
where wavadapt's adapters, routing and training apply as to any wav2vec 2.0, key by key; the positional
convolution's plain weight becomes the weight norm's direction and magnitude (``g = ||w||`` over the kernel axis,
``v = w``). The CTC head (``ctc_head``) is the task's head; the vocabulary is the tokenizer's, the blank at
config.json's ``blank_token_id``, SentencePiece's word boundary ``▁`` read as wavadapt's ``|``. Waveforms are
normalised per utterance, as its feature extractor does.
"""

from pathlib import Path

import torch

from wavadapt.data.text import WORD_DELIMITER, Vocabulary, VocabularyError
from wavadapt.errors import CheckpointError
from wavadapt.interop.hf import read_do_normalize, read_json
from wavadapt.model.ctc import CTCModel

TASK = "omniasr"
"""The task an Omnilingual checkpoint's own head and vocabulary become."""
MODEL_TYPE = "omniasr_ctc"
SENTENCEPIECE_SPACE = "\u2581"

# transformers' OmniASR names -> its Wav2Vec2Model's, by prefix (the rest of each name is the same in both).
RENAMES = (
    ("model.audio_tower.subsampling.conv_layers.", "feature_extractor.conv_layers."),
    ("model.audio_tower.subsampling.layer_norm.", "feature_projection.layer_norm."),
    ("model.audio_tower.subsampling.projection.", "feature_projection.projection."),
    ("model.audio_tower.layers.", "encoder.layers."),
    ("model.audio_tower.layer_norm.", "encoder.layer_norm."),
)
POSITIONAL = "model.audio_tower.encode_positions.conv."


def is_omniasr_dir(path: Path) -> bool:
    """Whether ``path`` holds an Omnilingual ASR CTC checkpoint in transformers' layout."""
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    try:
        return read_json(path / "config.json").get("model_type") == MODEL_TYPE
    except CheckpointError:  # the other loaders name what is wrong with it
        return False


def load_omniasr_dir(path: Path) -> CTCModel:
    """The checkpoint as a CTCModel (eval mode) with its task :data:`TASK` active."""
    from transformers import AutoTokenizer, OmniASRForCTC, Wav2Vec2Model

    from wavadapt.model.backbone import quiet_transformers

    with quiet_transformers():
        try:
            source = OmniASRForCTC.from_pretrained(path).eval()
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot load the Omnilingual ASR checkpoint ({e})") from None
        backbone = Wav2Vec2Model(wav2vec2_config(source.config)).eval()
    missing, unexpected = backbone.load_state_dict(wav2vec2_state(source.state_dict()), strict=False)
    if unexpected or set(missing) - {"masked_spec_embed"}:
        raise CheckpointError(f"{path}: its encoder does not fill wav2vec 2.0's (missing {missing}, left over "
                              f"{unexpected})")
    # It has no mask embedding (it was fine-tuned): one drawn the same way every time, so that the backbone's
    # fingerprint, which task files trained on it carry, is the same at every load.
    with torch.no_grad():
        backbone.masked_spec_embed.uniform_(generator=torch.Generator().manual_seed(0))
    vocab = vocabulary(path, tokenizer.convert_ids_to_tokens(list(range(source.config.vocab_size))),
                       source.config.blank_token_id, tokenizer.unk_token)
    model = CTCModel(backbone).eval()
    model.add_task(TASK, vocab)
    model.heads[TASK].load_state_dict(source.ctc_head.state_dict())
    model.activate(TASK)
    model.do_normalize = read_do_normalize(path) is not False
    return model


def wav2vec2_config(config):
    """The Wav2Vec2Config of an OmniASRCTCConfig's encoder."""
    from transformers import Wav2Vec2Config

    audio = config.audio_config
    return Wav2Vec2Config(
        hidden_size=audio.hidden_size, num_hidden_layers=audio.num_hidden_layers,
        num_attention_heads=audio.num_attention_heads, intermediate_size=audio.intermediate_size,
        hidden_act=audio.hidden_act, feat_extract_activation=audio.hidden_act, layer_norm_eps=audio.layer_norm_eps,
        conv_dim=tuple(audio.conv_dim), conv_stride=tuple(audio.conv_stride), conv_kernel=tuple(audio.conv_kernel),
        conv_bias=audio.conv_bias, feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=audio.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=audio.num_conv_pos_embedding_groups, hidden_dropout=audio.hidden_dropout,
        attention_dropout=audio.attention_dropout, activation_dropout=audio.activation_dropout,
        layerdrop=audio.layerdrop, vocab_size=config.vocab_size)


def wav2vec2_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OmniASRForCTC's encoder tensors under Wav2Vec2Model's names (the CTC head left out)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith(POSITIONAL + "weight"):
            out["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = \
                torch.linalg.vector_norm(tensor, dim=(0, 1), keepdim=True)  # weight_norm(dim=2): g over the kernel
            out["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = tensor
        elif name.startswith(POSITIONAL):
            out["encoder.pos_conv_embed.conv." + name[len(POSITIONAL):]] = tensor
        else:
            prefix = next((p for p in RENAMES if name.startswith(p[0])), None)
            if prefix is not None:
                out[prefix[1] + name[len(prefix[0]):]] = tensor
            elif not name.startswith("ctc_head."):
                raise CheckpointError(f"Omnilingual ASR tensor {name!r} has no place in wav2vec 2.0")
    return out


def vocabulary(path: Path, tokens: list[str], blank_id: int, unk: str | None) -> Vocabulary:
    """The tokenizer's tokens in id order, SentencePiece's word boundary as ``|``."""
    tokens = [WORD_DELIMITER if t == SENTENCEPIECE_SPACE else t for t in tokens]
    try:
        return Vocabulary(tokens, blank=tokens[blank_id], unk=unk or tokens[blank_id])
    except (VocabularyError, IndexError) as e:
        raise CheckpointError(f"{path}: its tokenizer is no CTC character vocabulary wavadapt reads ({e})") from None
