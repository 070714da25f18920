"""Past one machine: two torchrun "nodes" (one process each, c10d rendezvous on 127.0.0.1) fine-tune into one shared
output folder exactly as one node with two processes does; only rank 0 writes the run."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from cli_runner import run_cli
from safetensors.torch import load_file

from wavadapt.interop.loading import load_asr_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finetune_args(corpus, out) -> list[str]:
    return ["-m", "wavadapt", "finetune", str(corpus), "--language", "en", "--model", "tiny", "--out", str(out),
            "--method", "top-n-adapters", "--top-n", "1", "--adapter-size", "8", "--max-updates", "2",
            "--max-seconds-per-batch", "6", "--valid-split", "", "--no-progress"]


def test_two_nodes_train_as_one_node_with_two_processes(synth_corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run"]
    subprocess.run([*run, "--standalone", "--nproc_per_node", "2", *finetune_args(synth_corpus, tmp_path / "one")],
                   check=True, env=env, timeout=300, capture_output=True)
    port, shared = free_port(), tmp_path / "shared"
    nodes = [subprocess.Popen([*run, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "job",
                               *finetune_args(synth_corpus, shared)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    one, two = (load_file(folder / "adapter.en.safetensors") for folder in (tmp_path / "one", shared))
    assert one.keys() == two.keys() and all((one[k] == two[k]).all() for k in one)
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_fsdp_full_fine_tuning_matches_ddp(synth_corpus, tmp_path):
    """Full fine-tuning sharded over two CPU processes (FSDP2 over gloo) trains as the replicated run (DDP) does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    common = ["-m", "wavadapt", "finetune", str(synth_corpus), "--language", "en", "--model", "tiny", "--method",
              "full", "--max-updates", "2", "--max-seconds-per-batch", "6", "--lr", "1e-3", "--valid-split", "",
              "--no-progress", "--layerdrop", "0", "--mask-time-prob", "0"]
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        subprocess.run([*run, *common, "--out", str(tmp_path / name), *extra], check=True, env=env, timeout=300,
                       capture_output=True)
    ddp, fsdp = (load_file(next((tmp_path / name).glob("backbone/*.safetensors"))) for name in ("ddp", "fsdp"))
    assert ddp.keys() == fsdp.keys()
    for k in ddp:
        torch.testing.assert_close(fsdp[k], ddp[k], rtol=1e-4, atol=1e-5)
    heads = [load_file(tmp_path / name / "adapter.en.safetensors") for name in ("ddp", "fsdp")]
    assert heads[0].keys() == heads[1].keys()
    for k in heads[0]:
        torch.testing.assert_close(heads[1][k], heads[0][k], rtol=1e-4, atol=1e-5)
    preset = load_asr_model("tiny", []).backbone.state_dict()
    moved = [k for k in ddp if k in preset and not torch.equal(ddp[k], preset[k])]
    assert len(moved) > len(ddp) // 2  # full fine-tuning moved the encoder: the match is not of two untrained models


def test_fsdp_outside_torchrun_is_refused(synth_corpus, tmp_path, capsys):
    code, out, err = run_cli(capsys, "finetune", synth_corpus, "--language", "en", "--model", "tiny", "--out",
                             tmp_path / "x", "--method", "full", "--fsdp")
    assert code == 1 and out == "" and err.startswith("error: --fsdp shards the model over torchrun's processes")


def test_a_sharded_run_resumes_bit_for_bit(synth_corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              str(Path(__file__).parent / "fsdp_worker.py"), str(synth_corpus)]
    for folder, mode in (("straight", "straight"), ("split", "stop"), ("split", "resume")):
        subprocess.run([*worker, str(tmp_path / folder), mode], check=True, env=env, timeout=300, capture_output=True)
    straight = torch.load(tmp_path / "straight" / "straight.pt")
    stopped, resumed = (torch.load(tmp_path / "split" / f"{mode}.pt") for mode in ("stop", "resume"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert any(not torch.equal(straight[k], stopped[k]) for k in straight)  # the resumed half did train
