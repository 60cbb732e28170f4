"""`facekd soup`: the uniform average of checkpoints of one network (no data needed)."""

from __future__ import annotations

import pytest
import torch

from facekd.cli import main
from facekd.errors import FacekdError
from facekd.hub import resolve
from facekd.models import build_backbone
from facekd.train.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from facekd.train.soup import make_soup


def _ckpt(tmp_path, name: str, seed: int, backbone: str = "student5"):
    torch.manual_seed(seed)
    net = build_backbone(backbone)
    with torch.no_grad():  # batch-norm statistics that differ between ingredients, as after training
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(seed + 10)
    path = tmp_path / name
    save_checkpoint(path, model_checkpoint(net, backbone, {}))
    return path, net


def test_a_soup_is_the_mean_of_its_ingredients(tmp_path, capsys):
    (a, na), (b, nb), (c, nc) = (_ckpt(tmp_path, f"{n}.pt", s) for n, s in (("a", 0), ("b", 1), ("c", 2)))
    out = tmp_path / "soup.pt"
    assert main(["soup", str(a), str(b), str(c), "--out", str(out)]) == 0
    sa, sb, sc = na.state_dict(), nb.state_dict(), nc.state_dict()
    got = resolve(out).backbone.state_dict()
    for k, v in got.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (sa[k] + sb[k] + sc[k]) / 3, rtol=1e-6, atol=1e-7)
        else:  # batch norm's step counter: the first ingredient's
            assert torch.equal(v, sa[k]) and int(v) == 10 and int(sb[k]) == 11
    record = load_checkpoint(out)["metrics"]["soup"]
    assert [r["file"] for r in record] == [str(a), str(b), str(c)] and all(len(r["sha256"]) == 64 for r in record)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith(str(a))

    # the distances printed: ||w_i - mean|| / ||mean|| over the floating-point tensors, by hand
    floats = [k for k, v in sa.items() if v.is_floating_point()]
    mean = {k: (sa[k].double() + sb[k].double() + sc[k].double()) / 3 for k in floats}
    norm = torch.sqrt(sum((mean[k] ** 2).sum() for k in floats))
    want = [float(torch.sqrt(sum(((s[k].double() - mean[k]) ** 2).sum() for k in floats)) / norm) for s in (sa, sb, sc)]
    assert make_soup([a, b, c]).distances == pytest.approx(want, rel=1e-9)


def test_a_soup_of_one_model_twice_is_that_model(tmp_path):
    a, net = _ckpt(tmp_path, "a.pt", 4)
    soup = make_soup([a, a])
    assert soup.distances == [0.0, 0.0]
    out = tmp_path / "s.pt"
    save_checkpoint(out, soup.checkpoint)
    x = torch.rand(2, 3, 112, 96)
    with torch.no_grad():
        assert torch.equal(resolve(out).backbone.eval()(x), net.eval()(x))


def test_other_networks_are_refused_by_name(tmp_path):
    a, _ = _ckpt(tmp_path, "a.pt", 0)
    other, _ = _ckpt(tmp_path, "other.pt", 1, backbone="mobilefacenet")
    with pytest.raises(FacekdError, match=r"other\.pt: another network than .*a\.pt"):
        make_soup([a, other])
    with pytest.raises(FacekdError, match="two or more checkpoints, got 1"):
        make_soup([a])
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(FacekdError, match=r"bad\.pt: not a facekd checkpoint"):
        make_soup([a, bad])
    # the same network name but a tensor of another shape (as two prunings would leave without records)
    ck = load_checkpoint(a)
    key = next(k for k in ck["model"] if k.endswith("weight"))
    ck["model"][key] = torch.zeros(1)
    odd = tmp_path / "odd.pt"
    save_checkpoint(odd, ck)
    with pytest.raises(FacekdError, match=rf"odd\.pt: {key.removeprefix('backbone.')} has shape \(1,\)"):
        make_soup([a, odd])
