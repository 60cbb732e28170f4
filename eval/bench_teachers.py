"""Cost of each ready teacher on this machine: conversion time (FaceNet's graph into the
weights cache), CPU embedding throughput through facekd's embedder (images/s, the
embedder's own batch size and threads), medians of ``--repeats`` runs.

    flock /tmp/facekd-cpu.lock python eval/bench_teachers.py --crops facenet_casia=/tmp/lfw-facenet160 \\
        --crops dlib_resnet=/tmp/lfw-dlib150 --crops mobilefacenet=/tmp/lfw-112x96 --out /tmp/bench_teachers.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from facekd.image_io import read_rgb
from facekd.evaluation.embed import embed_images
from facekd.hub import resolve
from facekd.weights import convert_into_cache


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", action="append", required=True, help="MODEL=FOLDER of its crops")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    out: dict = {"cpu_threads": torch.get_num_threads(), "cores": os.cpu_count()}
    conv = [convert_into_cache("facenet_casia").seconds for _ in range(args.repeats)]
    out["facenet_casia_conversion_s"] = {"median": statistics.median(conv), "runs": conv}
    print(f"facenet_casia conversion: {statistics.median(conv):.2f} s (median of {len(conv)})")
    for spec in args.crops:
        model, folder = spec.split("=", 1)
        files = sorted(p for p in Path(folder).rglob("*.jpg"))[: args.images]
        crops = np.stack([read_rgb(p) for p in files])  # decoded up front: the model's speed only
        t0 = time.perf_counter()
        emb = resolve(model).embedder()
        load_s = time.perf_counter() - t0
        embed_images(emb, lambda i: crops[i], min(len(crops), 32))  # warm-up
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            embed_images(emb, lambda i: crops[i], len(crops))
            rates.append(len(crops) / (time.perf_counter() - t0))
        out[model] = {"images": len(crops), "load_s": load_s, "images_per_s": statistics.median(rates), "runs": rates,
                      "batch_size": emb.batch_size, "concurrency": emb.concurrency}
        print(f"{model}: {statistics.median(rates):.1f} images/s (median of {len(rates)}; batch {emb.batch_size}, "
              f"{emb.concurrency} concurrent), load {load_s:.1f} s")
    args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
