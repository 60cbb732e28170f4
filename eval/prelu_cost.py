"""What each PReLU a ReLU surgery keeps costs in INT8, and how far the surgery moves the
function: the table behind choosing a scope for ``prelu_to_relu@...``.

    python eval/prelu_cost.py --calib PACKS/dev_train_yunet_q85.fkpack --json cost.json

For each scope (the PReLUs turned into ReLUs; the others stay and run in FP32 between a
DequantizeLinear and a QuantizeLinear), the trained MobileFaceNet-CASIA goes through the
surgery, facekd's export and an INT8 recipe (``--recipe``; by default
``qdq_all_mean_range_fp32_stem``, which passes for these networks and keeps the PReLUs in
FP32; its ``_int8_prelu`` form runs them in INT8 too), and is timed against the unchanged
model's FP32 export, against its INT8 form (the first row) and against its own FP32 export
("x own FP32": under 1 where its INT8 pays on this CPU); ONNX Runtime, batch 1, one
thread, interleaved rounds, medians. "cosine after surgery" is the mean cosine of the
surgery's embeddings to the unchanged model's on held-out crops, before any recovery: how
much a recovery has to undo. "INT8 cosine" compares each model's INT8 with its own FP32 export on the same crops.
The last two rows make the PReLUs LeakyReLUs instead (one slope per layer), which ONNX
Runtime keeps inside the INT8 graph as ``QLinearLeakyRelu``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _blocks(last: int) -> str:
    return "prelu_to_relu@" + ",".join(f"blocks.{i}" for i in range(last + 1))


# Scope name -> surgery ops, applied in order (empty: the unchanged model quantised as it is).
SCOPES = {
    "every PReLU kept": [],
    "ReLU in blocks 0-4": [_blocks(4)],  # the bottlenecks whose maps are 28x24, the largest
    "ReLU in blocks 0-8": [_blocks(8)],
    "ReLU in every bottleneck": ["prelu_to_relu@blocks"],
    "ReLU everywhere": ["prelu_to_relu"],
    # A LeakyReLU stays in INT8 (QLinearLeakyRelu): what one slope per layer costs instead.
    "ReLU in blocks 0-4, LeakyReLU elsewhere": [_blocks(4), "prelu_to_leaky"],
    "LeakyReLU everywhere": ["prelu_to_leaky"],
}
RECIPE = "qdq_all_mean_range_fp32_stem"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=Path, required=True, help="aligned crops (folder or .fkpack) to calibrate and probe")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--recipe", default=RECIPE, help=f"the INT8 recipe (default {RECIPE})")
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args(argv)

    import torch

    from facekd.deploy.export import calibration_and_probe, export_onnx
    from facekd.deploy.quantize import INT8_RECIPES, apply_recipe
    from facekd.hub import resolve
    from facekd.io_utils import atomic_write_json
    from facekd.models.surgery import apply_surgery
    from facekd.preprocessing import cosine_rows
    from facekd.runtime.onnx import ort_session
    from facekd.runtime.timing import measure_latency, median_ratio
    from facekd.train.speed import cpu_info

    src = resolve("mobilefacenet", "mobilefacenet_casia")
    base = src.backbone.eval()
    size = tuple(base.cfg.input_size)
    calib, probe, _ = calibration_and_probe(args.calib, src.pre, size)
    recipe = INT8_RECIPES.build(args.recipe)
    rows, sessions = [], {}
    with tempfile.TemporaryDirectory(prefix="facekd-prelu-cost-") as tmp:
        ref_path = Path(tmp) / "mobilefacenet.onnx"
        export_onnx(base, ref_path, input_size=size)
        sessions["MobileFaceNet FP32"] = ort_session(ref_path)
        name_in = sessions["MobileFaceNet FP32"].get_inputs()[0].name
        ref = sessions["MobileFaceNet FP32"].run(None, {name_in: probe})[0]
        for i, (label, ops) in enumerate(SCOPES.items()):
            net = copy.deepcopy(base)
            if ops:
                apply_surgery(net, ops)
            fp32, int8 = Path(tmp) / f"{i}.onnx", Path(tmp) / f"{i}.int8.onnx"
            export_onnx(net.eval(), fp32, input_size=size)
            apply_recipe(fp32, int8, recipe, calib)
            sessions[label] = ort_session(int8)  # built once: embedded here, timed below
            if i:  # the first scope is MobileFaceNet itself, whose FP32 session is the reference
                sessions[f"{label} FP32"] = ort_session(fp32)
            e32 = sessions.get(f"{label} FP32", sessions["MobileFaceNet FP32"]).run(None, {name_in: probe})[0]
            e8 = sessions[label].run(None, {name_in: probe})[0]
            prelus = sum(isinstance(m, torch.nn.PReLU) for m in net.modules())
            rows.append({"scope": label, "surgery": ops, "prelus_kept": prelus,
                         "cosine_after_surgery": round(float(cosine_rows(e32, ref).mean()), 4),
                         "int8_cosine": round(float(cosine_rows(e8, e32).mean()), 4)})
        timings = measure_latency(sessions, rounds=args.rounds, inputs=probe[:1])
    base_t, base_int8 = timings["MobileFaceNet FP32"], timings[rows[0]["scope"]]
    print(f"CPU: {cpu_info().describe()}; ONNX Runtime, batch 1, one thread, {args.rounds} interleaved rounds")
    print(f"MobileFaceNet FP32: {base_t.median_ms:.2f} ms")
    print(f"{'INT8, ' + args.recipe:<42} {'PReLUs':>6} {'ms':>6} {'x FP32':>7} {'x INT8':>7} {'own FP32 ms':>11} "
          f"{'x own FP32':>10} {'cos after surgery':>18} {'INT8 cos':>9}")
    for row in rows:
        t = timings[row["scope"]]
        own = timings.get(f"{row['scope']} FP32", base_t)
        row["int8_ms"] = round(t.median_ms, 3)
        row["fp32_ms"] = round(own.median_ms, 3)
        row["ratio_to_own_fp32"] = round(median_ratio(t, own)[0], 3)
        row["ratio_to_fp32"] = round(median_ratio(t, base_t)[0], 3)
        row["ratio_to_int8"] = round(median_ratio(t, base_int8)[0], 3)
        print(f"{row['scope']:<42} {row['prelus_kept']:>6} {row['int8_ms']:>6.2f} {row['ratio_to_fp32']:>7.2f} "
              f"{row['ratio_to_int8']:>7.2f} {row['fp32_ms']:>11.2f} {row['ratio_to_own_fp32']:>10.2f} "
              f"{row['cosine_after_surgery']:>18.4f} {row['int8_cosine']:>9.4f}")
    if args.json:
        atomic_write_json(args.json, {
            "cpu": cpu_info().describe(), "machine": platform.node(), "rounds": args.rounds,
            "recipe": args.recipe, "mobilefacenet_fp32_ms": round(base_t.median_ms, 3), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
