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

With ``--probe-teacher`` the new outputs start at a linear probe instead of zero (the
first half of "linear probe, then fine-tune"): a ridge regression from the embedding
layer's input (the global depthwise conv's 512 values) to the second member's unit
embedding, scaled to the source's own embedding norm, so that both slices weigh the same
after normalisation, as in the ensemble teacher. It reads the crops the distillation will
use and the teacher's outputs from the same cache the distillation fills:

    python eval/widen_embedding.py mobilefacenet --weights mobilefacenet_casia --width 640 --out WIDE.pt \
        --probe-data PACKS/devplus_train_yunet_q85.fkpack --probe-teacher facenet_casia \
        --probe-crops PACKS/devplus_train_facenet160_yunet_q85.fkpack

It prints the probe's mean cosine to the teacher on a held-out tenth of the crops (fitted on
the rest), then fits on all of them.
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
    ap.add_argument("--probe-teacher", help="start the new outputs at a linear probe of this teacher (e.g. facenet_casia)")
    ap.add_argument("--probe-weights", help="the probe teacher's weights, for a registered backbone")
    ap.add_argument("--probe-crops", help="the probe teacher's own crops of --probe-data (a pack), as teacher.crops")
    ap.add_argument("--probe-data", help="the student's training crops (a pack or folder), as data.train")
    ap.add_argument("--ridge", type=float, default=1e-3,
                    help="ridge strength, relative to the features' mean variance (default 1e-3)")
    args = ap.parse_args(argv)
    if args.probe_teacher and not args.probe_data:
        ap.error("--probe-teacher needs --probe-data (the crops the distillation trains on)")

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
        if args.probe_teacher:
            probe = _linear_probe(net, src.pre, args, args.width - old)
            state["embed.conv.weight"][old:] = probe["conv"][:, :, None, None]
            for key in ("running_mean", "running_var", "weight", "bias"):
                state[f"embed.bn.{key}"][old:] = probe[key]
        wide.load_state_dict(state)
        x = torch.randn(4, 3, *net.cfg.input_size)
        with torch.no_grad():
            a, b = net(x), wide(x)
        moved = float((b[:, :old] - a).abs().max() / a.abs().max())
        if not args.probe_teacher:
            moved = max(moved, float(b[:, old:].abs().max()))
        if moved > 1e-5:
            raise FacekdError(f"{args.model}: the widened network moved the embedding by {moved:.2e}")
        save_checkpoint(args.out, model_checkpoint(wide, name, bargs))
    except FacekdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = f"a linear probe of {args.probe_teacher}" if args.probe_teacher else "zero"
    print(f"{args.out}: {name} with a {args.width}-d embedding ({old} trained + {args.width - old} new, "
          f"starting at {start}); the trained outputs moved by {moved:.1e} on 4 random inputs")
    return 0


def _linear_probe(net, pre, args, width: int) -> dict:
    """Ridge regression from the input of ``net.embed`` to the probe teacher's unit
    embeddings times the norm of ``net``'s own embedding, as the new rows' conv weights
    and a batch norm that passes them through (its statistics are those of the fit)."""
    import copy

    import torch

    from facekd.distill.config import TeacherCfg
    from facekd.distill.teacher import center_outputs, load_teacher, teacher_embeddings
    from facekd.distill.teacher_crops import teacher_inputs
    from facekd.errors import FacekdError
    from facekd.evaluation.embed import TorchEmbedder, embed_images
    from facekd.progress import progress_bar
    from facekd.train.config import DataCfg
    from facekd.train.data import build_train_set

    data = build_train_set(DataCfg(train=[args.probe_data]), pre.template)
    tcfg = TeacherCfg(model=args.probe_teacher, weights=args.probe_weights, crops=args.probe_crops)
    t = load_teacher(tcfg, data.identities, torch.device("cpu"))
    target = teacher_embeddings(t, teacher_inputs(tcfg.crops, t.template, data)).float()
    if t.center:  # as the ensemble teacher does, before it normalises
        target = center_outputs(target, t.name).float()
    if target.shape[1] != width:
        raise FacekdError(f"--probe-teacher {args.probe_teacher}: its embedding has {target.shape[1]} values, the new "
                          f"outputs {width} (--width must be the source's width plus the teacher's)")
    # The source with its embedding layer tapped: it returns what the layer reads beside
    # what it writes, and runs through the evaluation's batched, threaded embedding pass.
    class Tap(torch.nn.Module):
        def __init__(self, layer: torch.nn.Module) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, self.layer(x)], dim=1)

    tapped = copy.deepcopy(net)
    tapped.embed = Tap(tapped.embed)
    gdim = net.embed.conv.in_channels
    out = embed_images(TorchEmbedder(tapped, pre, "probe features"), data.image, len(data),
                       progress=progress_bar("probe features"))
    feats = torch.from_numpy(out).double()
    g, n = feats[:, :gdim], len(data)
    y = torch.nn.functional.normalize(target.double(), dim=1) * feats[:, gdim:].norm(dim=1, keepdim=True)
    held = torch.arange(n) % 10 == 0

    def fit(rows):
        gm, ym = g[rows].mean(0), y[rows].mean(0)
        gc, yc = g[rows] - gm, y[rows] - ym
        gram = gc.T @ gc
        lam = args.ridge * float(gram.diagonal().mean())
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), gc.T @ yc).T  # (width, in)
        return w, gm, ym

    w, gm, ym = fit(~held)
    pred = (g[held] - gm) @ w.T + ym
    cos = float(torch.nn.functional.cosine_similarity(pred, y[held], dim=1).mean())
    print(f"probe: {args.probe_teacher} from {g.shape[1]} features of {n} crops; mean cosine to it on the "
          f"{int(held.sum())} held-out crops: {cos:.4f}")
    w, gm, ym = fit(torch.ones(n, dtype=torch.bool))
    out = g @ w.T  # the conv's outputs; the batch norm maps them to w·(g - mean g) + mean y
    var = out.var(0, unbiased=False)
    eps = net.embed.bn.eps
    return {"conv": w.float(), "running_mean": out.mean(0).float(), "running_var": var.float(),
            "weight": (var + eps).sqrt().float(), "bias": ym.float()}


if __name__ == "__main__":
    raise SystemExit(main())
