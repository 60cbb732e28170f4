"""Can MobileFaceNet's PReLUs become ReLUs *exactly*? Yes, at a price: this measures it.

    python eval/prelu_sign_split.py --calib PACKS/dev_train_yunet_q85.fkpack

PReLU(z) = relu(z) - a * relu(-z). A conv whose output a PReLU follows can produce both z
and -z (its weights stacked with their negatives), a fused ReLU gives relu(z) and
relu(-z), and the next linear layer takes both with its weights scaled by 1 and -a. A
depthwise conv between two PReLUs (every bottleneck, and the stem) needs its input's two
halves summed before the next PReLU; two ways are measured:

- ``add4``: the conv before it produces [z, z, -z, -z], the depthwise conv runs on all
  four copies (weights k, -k, -a k, a k) and an Add of the two halves gives [d, -d];
- ``group``: the conv produces [z, -z] interleaved and a grouped conv (2 inputs, 2 outputs
  per group) gives [d, -d].

Both compute MobileFaceNet's function (checked here to 1e-4) with ReLUs only, so that
every activation fuses into a quantised Conv; both are exported with facekd's export,
quantised with ``qdq_all_mean_range`` and timed against the unchanged model's FP32
export (ONNX Runtime, batch 1, one thread, interleaved rounds, medians). A prototype for
the measurement, not a facekd surgery: see docs/front.md for why.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _fold(cb) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A ConvBN's conv with its batch norm folded in: (weight, bias, PReLU slopes or None)."""
    bn = cb.bn
    w, b = fuse_conv_bn_weights(cb.conv.weight, cb.conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                bn.bias)
    a = cb.act.weight.detach() if isinstance(cb.act, nn.PReLU) else None
    return w.detach(), b.detach(), a


def _conv(w: torch.Tensor, b: torch.Tensor, stride=1, padding=0, groups: int = 1) -> nn.Conv2d:
    c = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride, padding, groups=groups)
    c.weight.data.copy_(w)
    c.bias.data.copy_(b)
    return c


def _consume(w: torch.Tensor, a: torch.Tensor, mode: str) -> torch.Tensor:
    """Weights of a linear layer reading y = relu(z) - a relu(-z) from the split pair."""
    neg = -w * a.view(1, -1, 1, 1)
    if mode == "add4":  # [relu(z); relu(-z)] as two halves
        return torch.cat([w, neg], 1)
    return torch.stack([w, neg], 2).reshape(w.shape[0], -1, *w.shape[2:])  # interleaved


class _Pair(nn.Module):
    """conv + PReLU(a) -> depthwise conv + PReLU(beta), as ReLUs: returns the split pair
    of the depthwise output (beta is applied by the consumer)."""

    def __init__(self, conv_bn, dw_bn, w=None, mode: str = "add4"):
        super().__init__()
        w0, b, a = _fold(conv_bn)
        w = w0 if w is None else w
        k, bk, _ = _fold(dw_bn)
        c, ak = w.shape[0], k * a.view(-1, 1, 1, 1)
        st, pad, st0, pad0 = dw_bn.conv.stride, dw_bn.conv.padding, conv_bn.conv.stride, conv_bn.conv.padding
        self.c, self.mode = c, mode
        if mode == "add4":
            self.first = _conv(torch.cat([w, w, -w, -w]), torch.cat([b, b, -b, -b]), st0, pad0)
            self.dw = _conv(torch.cat([k, -k, -ak, ak]), torch.cat([bk, -bk, 0 * bk, 0 * bk]), st, pad, groups=4 * c)
        else:
            self.first = _conv(torch.stack([w, -w], 1).reshape(2 * c, *w.shape[1:]),
                               torch.stack([b, -b], 1).reshape(-1), st0, pad0)
            g = torch.stack([torch.cat([k, -ak], 1), torch.cat([-k, ak], 1)], 1).reshape(2 * c, 2, *k.shape[2:])
            self.dw = _conv(g, torch.stack([bk, -bk], 1).reshape(-1), st, pad, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(F.relu(self.first(x)))
        if self.mode == "add4":
            h = h[:, : 2 * self.c] + h[:, 2 * self.c:]
        return F.relu(h)


class _Block(nn.Module):
    def __init__(self, pair: _Pair, project: nn.Conv2d, residual: bool):
        super().__init__()
        self.pair, self.project, self.residual = pair, project, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.pair(x))
        return x + y if self.residual else y


class SignSplitMobileFaceNet(nn.Module):
    """A trained MobileFaceNet (eval mode) rewritten with ReLUs only, the same function."""

    def __init__(self, m, mode: str = "add4"):
        super().__init__()
        self.stem = _Pair(m.stem, m.stem_dw, mode=mode)
        a_prev, blocks = m.stem_dw.act.weight.detach(), []
        for i, blk in enumerate(m.blocks):
            w = _consume(_fold(blk.expand)[0], a_prev, mode) if i == 0 else None  # block 0 reads the stem's pair
            pair = _Pair(blk.expand, blk.depthwise, w=w, mode=mode)
            wp, bp, _ = _fold(blk.project)
            blocks.append(_Block(pair, _conv(_consume(wp, blk.depthwise.act.weight.detach(), mode), bp), blk.residual))
        self.blocks = nn.Sequential(*blocks)
        wh, bh, ah = _fold(m.head)
        kg, bg, _ = _fold(m.gdc)
        we, be, _ = _fold(m.embed)
        self.head = _conv(torch.cat([wh, -wh]), torch.cat([bh, -bh]))
        self.gdc = _conv(torch.cat([kg, -kg * ah.view(-1, 1, 1, 1)]), torch.cat([bg, 0 * bg]), groups=2 * kg.shape[0])
        self.embed = _conv(torch.cat([we, we], 1), be)  # the GDC's two halves summed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.embed(self.gdc(F.relu(self.head(x)))).flatten(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=Path, required=True, help="aligned crops (folder or .fkpack) to calibrate and probe")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)

    from facekd.deploy.export import calibration_and_probe, export_onnx
    from facekd.deploy.quantize import INT8_RECIPES, apply_recipe
    from facekd.hub import resolve
    from facekd.preprocessing import cosine_rows
    from facekd.runtime.onnx import ort_session
    from facekd.runtime.timing import measure_latency, median_ratio
    from facekd.train.speed import cpu_info

    src = resolve("mobilefacenet", "mobilefacenet_casia")
    m = src.backbone.eval()
    size = tuple(m.cfg.input_size)
    calib, probe, _ = calibration_and_probe(args.calib, src.pre, size)
    recipe = INT8_RECIPES.build("qdq_all_mean_range")
    with tempfile.TemporaryDirectory(prefix="facekd-sign-split-") as tmp:
        files = {"MobileFaceNet FP32": Path(tmp) / "mfn.onnx"}
        export_onnx(m, files["MobileFaceNet FP32"], input_size=size)
        x = torch.from_numpy(probe)
        with torch.no_grad():
            ref = m(x)
        params = {}
        for mode in ("add4", "group"):
            net = SignSplitMobileFaceNet(m, mode).eval()
            with torch.no_grad():
                diff = float((net(x) - ref).abs().max())
            if diff > 1e-4:
                raise SystemExit(f"{mode}: the rewrite moved the embedding by {diff:.3g}")
            fp32, int8 = Path(tmp) / f"{mode}.onnx", Path(tmp) / f"{mode}.int8.onnx"
            export_onnx(net, fp32, input_size=size)
            apply_recipe(fp32, int8, recipe, calib)
            files[f"{mode} FP32"], files[f"{mode} INT8"] = fp32, int8
            params[mode] = (sum(p.numel() for p in net.parameters()), diff)
        sessions = {k: ort_session(f) for k, f in files.items()}  # built once: embedded, then timed
        name = sessions["MobileFaceNet FP32"].get_inputs()[0].name
        e0 = sessions["MobileFaceNet FP32"].run(None, {name: probe})[0]
        cos = {k: float(cosine_rows(sess.run(None, {name: probe})[0], e0).mean()) for k, sess in sessions.items()}
        t = measure_latency(sessions, rounds=args.rounds, inputs=probe[:1])
    base = t["MobileFaceNet FP32"]
    print(f"CPU: {cpu_info().describe()}; ONNX Runtime, batch 1, one thread, {args.rounds} interleaved rounds")
    for mode, (n, diff) in params.items():
        print(f"{mode}: {n / 1e6:.2f} M parameters, largest embedding difference to MobileFaceNet {diff:.1e}")
    for k in files:
        print(f"{k:<20} {t[k].median_ms:6.2f} ms  {median_ratio(t[k], base)[0]:5.2f}x  cosine to MobileFaceNet {cos[k]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
