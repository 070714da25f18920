"""FSDP for the training loop: parameters, gradients and optimizer state sharded over torchrun's processes (torch's
``fully_shard``, FSDP2: one unit per encoder layer, the rest in the root), so full fine-tuning fits models that do
not fit one device. Checkpoints and the saved model hold full tensors, as without sharding: a sharded run resumes
on any number of processes and saves what an unsharded one saves.
"""

import copy
from collections.abc import Sequence

import torch
from torch import nn

from wavadapt.errors import WavadaptError


def shard(model: nn.Module, units: Sequence[nn.Module], device: torch.device, world_size: int) -> nn.Module | None:
    """Shard ``model`` in place over the process group, ``units`` each on its own; returns a full copy on the CPU for
    rank 0 to save from (:func:`fill`), None elsewhere."""
    import torch.distributed as dist

    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as e:
        raise WavadaptError(f"--fsdp needs torch's fully_shard (FSDP2), which this torch lacks ({e})") from None
    full = copy.deepcopy(model).cpu() if dist.get_rank() == 0 else None
    mesh = init_device_mesh(device.type, (world_size,))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return full


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: Sequence[str]) -> tuple[dict, dict]:
    """The trainable parameters ``names`` and the optimizer state as full tensors (on rank 0; every rank calls)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    params = get_model_state_dict(model, options=_options())
    return {k: v for k, v in params.items() if k in names}, get_optimizer_state_dict(model, optimizer,
                                                                                        options=_options())


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, params: dict, optimizer_state: dict) -> None:
    """Load what :func:`full_state` saved into the sharded model and optimizer (every rank calls, with the same)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, params, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def fill(model: nn.Module, full: nn.Module | None) -> None:
    """Copy the sharded ``model``'s weights into rank 0's ``full`` copy (every rank calls)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options())
    if full is not None:
        full.load_state_dict(state)
