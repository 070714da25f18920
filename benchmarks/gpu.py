"""The GPU check, measured in one run on one CUDA device (the device tool's machine; `make test-gpu` runs the tests).

1. Inference: real-time factor (audio seconds per wall second) of Base-shape CTC inference under bf16 autocast,
   a batch of 16 rows of ``--seconds`` each, with every row on one adapter task and with 16 distinct tasks (the
   gathered per-row routing), with transformers' SDPA attention and with its eager attention. The anchor: NVIDIA's
   wav2vec2-Base reference gives about 1,780x real time on one A100 80 GB at bf16, batch 16.
2. Fine-tuning: one bf16 step (forward, CTC loss, backward, AdamW) of each method on the Base shape, its time and
   the peak memory it allocated.

Random weights (the shapes decide the cost); medians of ``--repeats`` after two warm-up runs, CUDA synchronised.

    python benchmarks/gpu.py                          # on a GPU
    python benchmarks/gpu.py --device cpu --preset tiny --repeats 1     # a smoke run of the script itself
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from inference import ADAPTER_SIZE, build_model

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.experiments.accounting import placeholder_vocabulary
from wavadapt.model.backbone import build_backbone
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import METHODS, MethodConfig, prepare

ROWS, TASKS = 16, 16


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def inference(preset: str, device: torch.device, seconds: float, repeats: int) -> None:
    model = build_model(preset, TASKS).to(device)
    waveforms = torch.randn(ROWS, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0)).to(device)
    tasks = [f"task{i}" for i in range(TASKS)]
    audio = ROWS * seconds
    print(f"inference: {preset} shape, batch {ROWS} x {seconds:g} s, bf16 autocast on {device}")
    print(f"{'attention':<11}{'tasks':>6}{'x real time':>13}{'vs one task':>13}")
    for attention in ("sdpa", "eager"):
        model.backbone.config._attn_implementation = attention
        rates = {}
        for name, chosen in (("1", [tasks[0]] * ROWS), ("16", tasks)):
            def run(chosen=chosen):
                with torch.inference_mode(), autocast(device):
                    return model.forward_mixed(waveforms, chosen).logits

            rates[name] = audio / timed(run, device, repeats)
            print(f"{attention:<11}{name:>6}{rates[name]:>12.0f}x{rates[name] / rates['1']:>12.2f}x")


def fine_tuning(preset: str, device: torch.device, seconds: float, repeats: int) -> None:
    print(f"\nfine-tuning: one bf16 step of each method, {preset} shape, batch {ROWS} x {seconds:g} s on {device}")
    print(f"{'method':<16}{'trainable':>12}{'step s':>9}{'peak GiB':>10}")
    vocab = placeholder_vocabulary()
    waveforms = torch.randn(ROWS, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.randint(1, len(vocab), (ROWS, int(seconds * 10)), generator=torch.Generator().manual_seed(1))
    labels, lengths = labels.to(device), torch.full((ROWS,), labels.shape[1], device=device)
    layers = build_backbone(preset).config.num_hidden_layers
    for method in METHODS:
        torch.manual_seed(0)
        model = CTCModel(build_backbone(preset)).to(device).train()
        params = prepare(model, "asr", vocab, MethodConfig(method, top_n=layers // 2 if "top-n" in method else None,
                                                           adapter_size=ADAPTER_SIZE[preset]))
        optimizer = torch.optim.AdamW(params.values(), lr=1e-5)

        def step(model=model, optimizer=optimizer):
            with autocast(device):
                loss = model.ctc_loss(model(waveforms), labels, lengths)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        took = timed(step, device, repeats)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        print(f"{method:<16}{sum(p.numel() for p in params.values()):>12,}{took:>9.3f}{peak:>10.2f}")
        del model, optimizer, params
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="base", choices=sorted(ADAPTER_SIZE))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: no CUDA device on this machine (torch {torch.__version__}); --device cpu runs a smoke test",
              file=sys.stderr)
        return 1
    if device.type == "cuda":
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    inference(args.preset, device, args.seconds, args.repeats)
    fine_tuning(args.preset, device, args.seconds, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
