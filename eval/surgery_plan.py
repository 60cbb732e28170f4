"""Where a ReLU surgery costs a trained network least: the greedy scope plan of
``facekd.models.surgery_plan``, printed as a table and as the op for ``prune.surgery``.

    python eval/surgery_plan.py H1/pruned.pt --calib PACKS/dev_train_yunet_q85.fkpack --share 0.35

Each step turns the activations under one more module into ReLUs (``--surgery``), taking
the module that loses the least embedding cosine (to the unchanged network, on the 64
held-out crops of ``--calib`` that ``facekd export`` checks parity on) per activation value
it frees; it stops once the freed values reach
``--share`` of all the surgery could free. In an INT8 graph a kept PReLU's price follows
its values, in FP32 or in INT8 (``eval/prelu_cost.py --recipe``), so the share is a proxy for the
latency a step saves; time the result with ``facekd board``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a facekd checkpoint or a registered model (e.g. mobilefacenet)")
    ap.add_argument("--weights", help="weights for a registered model (e.g. mobilefacenet_casia)")
    ap.add_argument("--calib", type=Path, required=True, help="aligned training crops (folder or .fkpack)")
    ap.add_argument("--share", type=float, required=True, help="share (0-1] of the surgery's activation values to free")
    ap.add_argument("--surgery", default="prelu_to_relu", help="a scopable surgery (default prelu_to_relu)")
    ap.add_argument("--json", type=Path, help="write the plan here too")
    args = ap.parse_args(argv)

    import torch

    from facekd.deploy.export import calibration_and_probe
    from facekd.errors import FacekdError
    from facekd.hub import resolve
    from facekd.io_utils import atomic_write_json
    from facekd.models.surgery_plan import plan_scope

    try:
        src = resolve(args.model, args.weights)
        net = src.backbone.eval()
        _, probe, _ = calibration_and_probe(args.calib, src.pre, tuple(net.cfg.input_size))
        faces = torch.from_numpy(probe)
        plan = plan_scope(net, args.surgery, faces, args.share)
    except FacekdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}: {args.surgery} could free {plan.total_values} activation values per face; "
          f"cosine to the unchanged network on {len(faces)} crops of {args.calib.name}")
    print(f"{'step':>4}  {'module':<28} {'values':>8} {'share':>6} {'cosine':>7}")
    freed = 0
    for i, s in enumerate(plan.steps, 1):
        freed += s.values
        print(f"{i:>4}  {s.path:<28} {s.values:>8} {freed / plan.total_values:>6.1%} {s.cosine:>7.4f}")
    print(f"op: {plan.op}")
    if args.json:
        atomic_write_json(args.json, {
            "model": args.model, "surgery": args.surgery, "share": args.share, "faces": len(faces),
            "calib": args.calib.name, "total_values": plan.total_values, "op": plan.op,
            "steps": [{"path": s.path, "values": s.values, "cosine": round(s.cosine, 4)} for s in plan.steps]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
