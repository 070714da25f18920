"""Run by tests/test_train.py under torchrun: the same run as the single-process one, sharded over ranks."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_train import DDP_RUN, ctc_objective, make_run  # noqa: E402

from wavadapt.training.loop import Trainer  # noqa: E402

corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
# Half the micro-batches per rank: 2 ranks x 1 == 1 process x update_freq 2.
model, params, data, config = make_run(corpus, "adapters", dropout=False, update_freq=1, **DDP_RUN)
Trainer(model, params, ctc_objective(model), data, config, out).train()
if dist.get_rank() == 0:
    torch.save({k: p.detach() for k, p in params.items()}, out / "params.pt")
dist.destroy_process_group()
