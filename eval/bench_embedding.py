"""CPU embedding throughput of a registered backbone in the ways facekd could run it.

    python eval/bench_embedding.py --model mobilefacenet [--batch 8 16] [--seconds 5]

Prints images/s (median of repeated timed runs after warm-up) for: eager PyTorch over
all cores, TorchScript frozen for inference over all cores, and the frozen model called
from one thread per core with one op thread each (what `facekd eval` does on a CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from facekd.evaluation.embed import optimize_for_cpu
from facekd.models import backbone_cfg, build_backbone


def _rate(fn, batches, threads: int, seconds: float) -> float:
    """Median images/s over repeated passes through ``batches``."""
    n = sum(len(b) for b in batches)
    rates = []
    deadline = time.perf_counter() + seconds
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, batches[:threads]))  # warm-up
        while time.perf_counter() < deadline or len(rates) < 3:
            t = time.perf_counter()
            list(pool.map(fn, batches))
            rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilefacenet")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    cfg = backbone_cfg(args.model)
    cores = torch.get_num_threads()
    eager = build_backbone(args.model).eval()
    frozen = optimize_for_cpu(build_backbone(args.model).eval(), cfg.input_size)

    def call(model):
        def f(x):
            with torch.inference_mode():
                return model(x)

        return f

    print(f"{args.model}, input {cfg.input_size}, {cores} cores; images/s (median)")
    for bs in args.batch:
        batches = [torch.randn(bs, 3, *cfg.input_size) for _ in range(max(8, 64 // bs))]
        torch.set_num_threads(cores)
        e = _rate(call(eager), batches, 1, args.seconds)
        f = _rate(call(frozen), batches, 1, args.seconds)
        torch.set_num_threads(1)
        p = _rate(call(frozen), batches, cores, args.seconds)
        torch.set_num_threads(cores)
        print(f"batch {bs:3d}: eager {e:7.1f}   frozen {f:7.1f}   frozen x{cores} threads {p:7.1f}")


if __name__ == "__main__":
    main()
