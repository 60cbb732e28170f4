"""Every registry, entry by entry: optimizers, schedules, INT8 recipes, model sources and
weights converters (backbones, heads, distillation terms, loaders, detectors and the
pruning registries have their own test files). The last test makes sure no registry is
left without a test parametrized over it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facekd.deploy.quantize import INT8_RECIPES, MODES, apply_recipe
from facekd.errors import FacekdError
from facekd.hub import MODEL_SOURCES  # the hub registers the external sources
from facekd.train.config import OptimCfg, ScheduleCfg
from facekd.models.transforms import MODEL_TRANSFORMS, apply_transforms, records
from facekd.train.loaders import LOADERS
from facekd.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule
from facekd.weights import CONVERTERS, manifest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_steps_downhill_without_decaying_1d_parameters(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.PReLU(4), nn.Linear(4, 1))
    opt = build_optimizer([model], OptimCfg(name=name, lr=0.01, weight_decay=0.1))
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert id(model[1].weight) in groups[0.0] and id(model[0].bias) in groups[0.0]
    assert id(model[0].weight) in groups[0.1]
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    before = nn.functional.mse_loss(model(x), y).item()
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert nn.functional.mse_loss(model(x), y).item() < before


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_warms_up_linearly_then_never_exceeds_the_peak(name):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_schedule(opt, ScheduleCfg(name=name, warmup_epochs=1.0), steps_per_epoch=4, epochs=5)
    rates = []
    for _ in range(20):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # (step + 1) / (warmup + 1)
    assert rates[4] == pytest.approx(1.0) and max(rates) <= 1.0 + 1e-12
    assert rates[-1] < 1.0  # it decays


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.PReLU(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 1)  # a body between a two-conv stem and a two-layer head
        self.conv4 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(self.conv4(self.conv3(self.conv2(self.act(self.conv(x))))).mean((2, 3)))


@pytest.mark.parametrize("name", INT8_RECIPES.names())
def test_every_int8_recipe_writes_a_model_close_to_fp32(name, tmp_path):
    import onnxruntime as ort

    from facekd.deploy.export import export_onnx

    torch.manual_seed(0)
    net = _Small().eval()
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(net, fp32, input_size=(16, 16))
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    out = tmp_path / f"{name}.onnx"
    apply_recipe(fp32, out, INT8_RECIPES.build(name), x)
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    a, b = run(fp32), run(out)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() > 0.95, f"{name}: mean cosine to FP32 {cos.mean():.3f}"
    assert any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv")
               for n in __import__("onnx").load(str(out)).graph.node), f"{name} quantized nothing"


def test_every_int8_mode_names_registered_recipes():
    for mode, names in MODES.items():
        assert names and all(n in INT8_RECIPES for n in names), mode


@pytest.mark.parametrize("name", MODEL_SOURCES.names())
def test_every_model_source_resolves_or_names_what_is_missing(name):
    """A source either resolves to something that embeds, or says which extra or file is
    missing (never a bare ImportError)."""
    from facekd.hub import resolve

    try:
        ref = resolve(name)
    except FacekdError as exc:
        assert re.search(r"pip install|not found|sha256", str(exc)), str(exc)
        return
    emb = ref.embedder("cpu")
    h, w = ref.pre.input_size
    out = emb(np.full((2, h, w, 3), 128, np.uint8))
    assert out.shape[0] == 2 and np.isfinite(out).all()


@pytest.mark.parametrize("name", CONVERTERS.names())
def test_every_converter_is_used_by_a_manifest_entry(name):
    assert any(entry.get("convert") == name for entry in manifest().values()), name


def test_every_registry_has_a_parametrized_test():
    names = set()
    for path in (REPO / "facekd").rglob("*.py"):
        names.update(re.findall(r"^(\w+)\s*:\s*Registry\b[^=]*=\s*Registry\(", path.read_text(), re.M))
    assert {"BACKBONES", "HEADS", "DISTILL_LOSSES"} <= names
    tests = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    untested = sorted(n for n in names if not re.search(rf"(parametrize\([^\n]*|params=){n}\.names\(\)", tests))
    assert not untested, f"registries without a test parametrized over them: {', '.join(untested)}"


@pytest.mark.parametrize("name", LOADERS.names())
def test_every_loader_yields_each_batch_in_order_with_its_labels(name, tmp_path):
    from facekd.image_io import encode_jpeg
    from facekd.data.pack import write_pack
    from facekd.data.transforms import AugmentCfg
    from facekd.train.config import DataCfg
    from facekd.train.data import build_train_set
    from facekd.train.loaders import LOADERS, LoaderCtx

    items = [(f"id{i % 3}/{i}.jpg", i % 3, encode_jpeg(np.full((112, 96, 3), 20 * i, np.uint8), 95)) for i in range(9)]
    write_pack(tmp_path / "p.fkpack", items, ["id0", "id1", "id2"], "112x96")
    data = build_train_set(DataCfg(train=[str(tmp_path / "p.fkpack")]), "112x96")
    batches = [np.array([4, 1, 7]), np.array([0, 8, 2])]
    ctx = LoaderCtx(data, AugmentCfg(flip=0.0, affine_p=0.0, color_p=0.0, gray_p=0.0), 127.5, 128.0,
                    torch.device("cpu"), 0, seed=0)
    got = list(LOADERS.get(name)(ctx).epoch(batches, 1))
    assert [idx.tolist() for _, _, idx in got] == [b.tolist() for b in batches]
    for (x, y, idx), b in zip(got, batches):
        assert y.tolist() == data.labels[b].tolist()
        # flat grey crops, normalised: the grey level each crop decodes to, within JPEG rounding
        want = torch.tensor([(float(data.image(i).mean()) - 127.5) / 128 for i in b], dtype=torch.float32)
        assert torch.allclose(x.float().mean(dim=(1, 2, 3)), want, atol=2 / 128)


def _importances():
    try:
        from facekd.prune.importance import IMPORTANCES
    except ImportError:  # the prune extra is absent: the test below says so
        return []
    return IMPORTANCES.names()


@pytest.mark.parametrize("name", _importances())  # IMPORTANCES.names()
def test_every_pruning_importance_prunes_and_records_what_it_did(name):
    """Each criterion removes half the filters of student5's prunable layers, and the
    record it leaves rebuilds the same widths on a fresh backbone."""
    from facekd.models import build_backbone
    from facekd.models.profile import count_params
    from facekd.prune.core import StepPlan, prune_once

    torch.manual_seed(0)
    net = build_backbone("student5", widths=[8, 16, 16, 32, 32]).eval()
    before = count_params(net)
    x = torch.randn(4, 3, 112, 96)
    y = torch.tensor([0, 1, 0, 1])
    head = nn.Linear(net.cfg.embedding_dim, 2)
    loss = lambda m, images, labels: nn.functional.cross_entropy(head(m(images)), labels)  # noqa: E731
    prune_once(net, name, StepPlan(0.5), batches=[(x, y)], loss=loss)
    assert count_params(net) < 0.6 * before
    fresh = apply_transforms(build_backbone("student5", widths=[8, 16, 16, 32, 32]), records(net))
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in net.parameters()]


@pytest.mark.parametrize("name", MODEL_TRANSFORMS.names())
def test_every_model_transform_replays_from_its_record(name):
    """A transformed model's records rebuild the same module structure on a fresh backbone."""
    from facekd.models import build_backbone

    tiny = {"base": 2, "units": [1, 1, 2, 1]}
    torch.manual_seed(0)
    net = build_backbone("resnet37_c10", **tiny).eval()
    if name == "prune":
        pytest.importorskip("torch_pruning", reason="pruning needs the prune extra (torch-pruning)")
        from facekd.prune.core import StepPlan, prune_once

        net = prune_once(net, "l1", StepPlan(0.25))
    else:
        args = {"exits": {"exits": [{"at": "features.4"}]}, "surgery": {"ops": ["prelu_to_relu"]}}
        net = apply_transforms(net, [{"name": name, **args[name]}])
    assert records(net) and records(net)[-1]["name"] == name
    fresh = apply_transforms(build_backbone("resnet37_c10", **tiny), records(net))
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in net.parameters()]
    fresh.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 112, 96)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), net(x))
