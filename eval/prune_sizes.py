"""Parameters and MACs of registered backbones with 25/50/75% of their filters removed
(per layer; the same for every importance, so the comparison between importances is at
equal cost). Exact counts, no timing.

Usage::

    python eval/prune_sizes.py mobilefacenet student5 resnet27_c10
"""

from __future__ import annotations

import argparse
import sys

import torch

from facekd.models import build_backbone
from facekd.models.profile import count_macs, count_params
from facekd.prune.core import StepPlan, prune_once


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| model | 0% | " + " | ".join(f"{100 * r:g}% fewer filters" for r in args.ratios) + " |")
    print("|---|" + "---|" * (len(args.ratios) + 1))
    for name in args.models:
        net = build_backbone(name)
        size = net.cfg.input_size
        cells = [f"{count_params(net) / 1e6:.3f} M / {count_macs(net, size) / 1e6:.1f} MMAC"]
        for r in args.ratios:
            net = build_backbone(name)
            prune_once(net, "l1", StepPlan(r))
            cells.append(f"{count_params(net) / 1e6:.3f} M / {count_macs(net, size) / 1e6:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
