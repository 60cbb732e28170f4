"""Every INT8 recipe on one model: latency ratio to FP32 (ORT, batch 1, one thread,
interleaved rounds) and cosine to FP32 on aligned faces. The table behind
facekd/deploy/quantize.py's choice of candidates (docs/BENCHMARKS.md).

    python eval/int8_recipes.py --model mobilefacenet --weights W.ckpt \
        --calib /tmp/dev_train_q85.fkpack --probe /tmp/lfw112x96
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    from facekd.deploy.crops import sample_crops
    from facekd.deploy.export import export_onnx, load_backbone
    from facekd.deploy.quantize import INT8_RECIPES, quantize_int8
    from facekd.preprocessing import to_input
    from facekd.errors import FacekdError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registered name (with --weights) or facekd checkpoint")
    ap.add_argument("--weights")
    ap.add_argument("--calib", type=Path, required=True, help="aligned crops to calibrate on")
    ap.add_argument("--probe", type=Path, required=True, help="aligned crops to compare INT8 with FP32 on")
    ap.add_argument("--recipes", nargs="*", help="default: every static recipe")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    net = load_backbone(args.model, args.weights)
    pre = net.cfg.pre
    calib = to_input(sample_crops(args.calib, pre.template, 128), pre)
    probe = to_input(sample_crops(args.probe, pre.template, 64), pre)
    names = args.recipes or [n for n in INT8_RECIPES.names() if INT8_RECIPES.build(n).static]
    print("| recipe | INT8/FP32 latency (median [min, max] of rounds) | FP32 ms | INT8 ms | cosine to FP32 mean / min |")
    print("|---|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(net, fp32, input_size=tuple(net.cfg.input_size))
        for name in names:
            try:
                res = quantize_int8(fp32, Path(tmp) / "int8.onnx", "static", calib=calib, probe=probe,
                                    candidates=(name,), rounds=args.rounds, max_ratio=10.0, min_cosine=-1.0)
                t = res.tried[0]
            except FacekdError as exc:
                print(f"| {name} | failed: {exc} | | | |")
                continue
            lo, hi = t["ratio_range"]
            print(f"| {name} | {t['ratio']:.2f} [{lo:.2f}, {hi:.2f}] | {t['fp32_ms']:.2f} | {t['int8_ms']:.2f} | "
                  f"{t['cosine_mean']:.4f} / {t['cosine_min']:.4f} |")


if __name__ == "__main__":
    main()
