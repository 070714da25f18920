"""Run by tests/test_multi_node.py under torchrun: full fine-tuning sharded by FSDP, straight or stopped and resumed."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_train import DDP_RUN, ctc_objective, make_run  # noqa: E402

from wavadapt.training.loop import Trainer  # noqa: E402

corpus, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
model, params, data, config = make_run(corpus, "full", dropout=False, max_updates=4, fsdp=True, **DDP_RUN)
trainer = Trainer(model, params, ctc_objective(model), data, config, out,
                  fsdp_units=list(model.backbone.encoder.layers))
if mode == "resume":
    trainer.resume(out / "checkpoints" / "last.pt")
trainer.train(until=2 if mode == "stop" else None)
if dist.get_rank() == 0:
    torch.save(trainer.trained_model.state_dict(), out / f"{mode}.pt")
dist.destroy_process_group()
