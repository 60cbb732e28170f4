"""A trained MobileFaceNet-type network with a wider embedding that starts as the same
function: the student for distilling an ensemble teacher without an adapter.

    python eval/widen_embedding.py mobilefacenet --weights mobilefacenet_casia --width 640 --out WIDE.pt

The ensemble teacher (``teacher.members``) is each member's L2-normalised embedding,
concatenated: 128 + 512 = 640 for MobileFaceNet + FaceNet-CASIA. A 128-d student reaches
it only through a learned adapter, and what the student keeps is its own 128-d embedding.
Here the student's embedding layer (``embed``, a 1x1 conv + batch norm after the
global depthwise conv) gets ``--width`` outputs instead: the first ones are the trained
ones, the new ones have fresh conv weights and a batch-norm scale of zero, so they output
zero and the widened network's normalised embedding is the source's, padded with zeros
(checked on random inputs before saving). Distillation with 10·FeatureNorm then trains the
whole vector towards the teacher's, slice by slice, with no adapter
(``facekd prune ... --set prune.source=WIDE.pt --set prune.ratio=0 --set teacher.members=...``).
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
    ap.add_argument("--width", type=int, required=True, help="the new embedding width (more than the source's)")
    ap.add_argument("--out", type=Path, required=True, help="the widened model's checkpoint (.pt)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new rows' conv weights")
    args = ap.parse_args(argv)

    import torch

    from facekd.errors import FacekdError
    from facekd.hub import resolve
    from facekd.models import build_backbone
    from facekd.models.transforms import apply_transforms, records
    from facekd.train.checkpoint import model_checkpoint, save_checkpoint

    try:
        src = resolve(args.model, args.weights)
        net = src.require_backbone("widening").eval()
        ckpt = src.checkpoint
        name = ckpt["backbone"] if ckpt is not None else net.cfg.name
        bargs = dict(ckpt.get("backbone_args", {})) if ckpt is not None else {}
        embed = getattr(net, "embed", None)
        conv, bn = getattr(embed, "conv", None), getattr(embed, "bn", None)
        if not isinstance(conv, torch.nn.Conv2d) or not isinstance(bn, torch.nn.BatchNorm2d) or conv.groups != 1:
            raise FacekdError(f"{args.model}: no embedding layer to widen (wants `embed` with a conv and a batch norm, "
                              f"as MobileFaceNet has)")
        old = conv.out_channels
        if args.width <= old:
            raise FacekdError(f"--width {args.width}: must exceed the source's embedding width ({old})")
        torch.manual_seed(args.seed)
        bargs["embedding_dim"] = args.width
        wide = apply_transforms(build_backbone(name, **bargs), records(net)).eval()
        state = wide.state_dict()
        for key, value in net.state_dict().items():
            if key.startswith("embed.") and value.dim() > 0:
                state[key][:old] = value  # the trained rows; the new rows keep their fresh init
            else:
                state[key] = value
        state["embed.bn.weight"][old:] = 0.0  # the new outputs start at zero: the same function
        state["embed.bn.bias"][old:] = 0.0
        wide.load_state_dict(state)
        x = torch.randn(4, 3, *net.cfg.input_size)
        with torch.no_grad():
            a = torch.nn.functional.normalize(net(x), dim=1)
            b = torch.nn.functional.normalize(wide(x), dim=1)
        moved = max(float((b[:, :old] - a).abs().max()), float(b[:, old:].abs().max()))
        if moved > 1e-5:
            raise FacekdError(f"{args.model}: the widened network moved the embedding by {moved:.2e}")
        save_checkpoint(args.out, model_checkpoint(wide, name, bargs))
    except FacekdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {name} with a {args.width}-d embedding ({old} trained + {args.width - old} new, "
          f"starting at zero); normalised embedding moved by {moved:.1e} on 4 random inputs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
