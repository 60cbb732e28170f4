"""The accuracy–latency board: MACs counted from ONNX graphs, the front, and one board run
end to end on a tiny synthetic LFW."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facekd.cli.main import main
from facekd.deploy.export import export_onnx
from facekd.deploy.macs import count_macs
from facekd.errors import FacekdError
from facekd.experiments.board import BoardRow, ensemble_row, pareto_front

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
from kill_sweep import make_lfw  # noqa: E402


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 8*16*16 outputs x 27
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # 8*16*16 outputs x 9
        self.fc = nn.Linear(8 * 16 * 16, 10)  # 10 outputs x 2048

    def forward(self, x):
        return self.fc(self.dw(torch.relu(self.conv(x))).flatten(1))


def test_macs_of_a_graph_are_counted_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    export_onnx(_Tiny().eval(), path, input_size=(16, 16), optimize=False)
    assert count_macs(path) == 2048 * 27 + 2048 * 9 + 10 * 2048


def test_macs_of_a_registered_backbone_match_torchs_counter(tmp_path: Path) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from facekd.models.base import build_backbone

    net = build_backbone("mobilefacenet").eval()
    path = tmp_path / "mfn.onnx"
    export_onnx(net, path, input_size=(112, 96))  # batch norm folded: the same convs
    with FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, 112, 96))
    assert count_macs(path) == fc.get_total_flops() // 2


def test_macs_of_a_file_that_is_not_onnx_name_it(tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(FacekdError, match="x.onnx"):
        count_macs(bad)


def test_front_keeps_only_rows_nothing_beats_on_both_axes() -> None:
    # (ms, accuracy): b is beaten by a (faster and more accurate); d ties a on ms, loses on accuracy
    points = [(5.0, 99.0), (6.0, 98.0), (2.0, 97.0), (5.0, 98.5), (None, 99.9), (10.0, 99.5)]
    assert pareto_front(points) == [True, False, True, False, False, True]


def _row(name: str, ms: float, params: int) -> BoardRow:
    return BoardRow(name, "ready", "fp32", params, None, ms, None, ms, None, 99.0, 0.1, None)


def test_ensemble_costs_the_sum_of_its_members() -> None:
    rows = [_row("facenet_casia", 40.0, 23), _row("mobilefacenet", 10.0, 1), _row("dlib_resnet", 20.0, 5)]
    ens = ensemble_row(rows)
    assert ens.ms == pytest.approx(70.0) and ens.params == 29
    assert ensemble_row(rows[:2]) is None  # a member not measured: no row, not a guess
    # FaceNet's INT8 form is fastest (12 ms) but the ensemble's recorded LFW was of its
    # FP32 form: the ensemble is costed at FaceNet's 40 ms, not 12.
    fast = replace(rows[0], form="int8", int8_ms=12.0, ms=12.0)
    assert ensemble_row([fast, *rows[1:]]).ms == pytest.approx(70.0)


def test_a_row_whose_lfw_is_recorded_shows_the_form_the_record_is_of(tmp_path: Path) -> None:
    """FaceNet on aligned 112x96 LFW: its LFW cannot be measured, so the row takes the
    recorded (full-precision) figure, and with it the FP32 latency, not the faster INT8's."""
    from types import SimpleNamespace

    from facekd.experiments.board import BoardSpec, _row
    from facekd.experiments.board_forms import Entry

    fp32 = tmp_path / "t.onnx"
    export_onnx(_Tiny().eval(), fp32, input_size=(16, 16), optimize=False)
    e = Entry(BoardSpec("facenet_casia", "facenet_casia", kind="ready", recorded={"lfw_flip": 99.02}))
    e.fp32 = e.int8 = fp32
    t = {"facenet_casia/fp32": SimpleNamespace(median_ms=28.0), "facenet_casia/int8": SimpleNamespace(median_ms=9.0)}
    row = _row(e, t)
    assert (row.form, row.ms, row.int8_ms, row.lfw_flip) == ("fp32", 28.0, 9.0, 99.02)
    assert "lfw_flip" in row.recorded
    e.spec = BoardSpec("facenet_casia", "facenet_casia", kind="ready")  # nothing recorded: its fastest form
    assert _row(e, t).form == "int8"


def test_board_measures_a_model_end_to_end(tmp_path: Path) -> None:
    from facekd.models.base import build_backbone

    torch.manual_seed(0)
    net = build_backbone("student5").eval()
    model = tmp_path / "s5.onnx"
    export_onnx(net, model, input_size=(112, 96), normalize=True)
    lfw = make_lfw(tmp_path / "lfw", folds=10, seed=0)  # two noisy copies per person: a random net tells them apart
    out = tmp_path / "board.json"
    rc = main(["board", f"mine={model}", "--no-ready", "--no-shipped", "--lfw", str(lfw), "--rounds", "2",
               "--work", str(tmp_path / "w"), "--json", str(out), "--plot", str(tmp_path / "board.png")])
    assert rc == 0
    board = json.loads(out.read_text())
    (row,) = board["rows"]
    assert row["name"] == "mine" and row["form"] == "fp32" and row["on_front"]
    assert row["macs"] == count_macs(model) > 0
    assert row["ms"] > 0 and row["recorded"] == []
    # the pairs are two noisy copies of each person's face: even a random network separates
    # them (100.0 here); a pipeline that mixed up pairs or folds would sit near 50
    assert row["lfw_plain"] >= 95.0 and row["lfw_flip"] >= 95.0
    assert (tmp_path / "board.png").stat().st_size > 0


def test_a_second_board_run_reuses_the_lfw_figures_of_the_same_model_bytes_only(tmp_path: Path) -> None:
    from facekd.experiments.board import BoardSpec, run_board
    from facekd.models.base import build_backbone

    lfw = make_lfw(tmp_path / "lfw", folds=10, seed=0)
    torch.manual_seed(0)
    export_onnx(build_backbone("student5").eval(), tmp_path / "s5.onnx", input_size=(112, 96), normalize=True)
    spec = [BoardSpec("mine", str(tmp_path / "s5.onnx"))]
    measured = run_board(spec, lfw, work=tmp_path / "w", rounds=1, say=print).rows[0]
    (kept,) = (tmp_path / "w").glob("lfw-mine-*.json")
    d = json.loads(kept.read_text())
    assert d["flip"]["accuracy"] == pytest.approx(measured.lfw_flip)
    d["flip"]["accuracy"] = 12.5  # a figure no real evaluation gives: the next run must read it from here
    kept.write_text(json.dumps(d))
    again: list[str] = []
    assert run_board(spec, lfw, work=tmp_path / "w", rounds=1, say=again.append).rows[0].lfw_flip == 12.5
    assert any("kept by an earlier run" in line for line in again)

    torch.manual_seed(1)  # other weights, the same file name: measured again
    export_onnx(build_backbone("student5").eval(), tmp_path / "s5.onnx", input_size=(112, 96), normalize=True)
    assert run_board(spec, lfw, work=tmp_path / "w", rounds=1, say=print).rows[0].lfw_flip != 12.5

    kept.write_text("{not json")
    broken: list[str] = []
    row = run_board(spec, lfw, work=tmp_path / "w", rounds=1, say=broken.append).rows[0]
    assert row.lfw_flip >= 95.0  # measured again (100.0 on these pairs), not the damaged file's
    assert any(str(kept) in line and "measuring again" in line for line in broken)


def test_a_model_without_an_onnx_form_is_timed_through_its_own_embedder() -> None:
    from types import SimpleNamespace

    from facekd.experiments.board_forms import own_call
    from facekd.preprocessing import Preprocessing

    seen = []

    class _Embedder:  # the Embedder protocol: called on a uint8 batch (N, H, W, 3)
        def __call__(self, batch):
            seen.append(batch.shape)
            return np.zeros((len(batch), 4), np.float32)

    resolved = SimpleNamespace(pre=Preprocessing(template="112x96"), embedder=lambda: _Embedder())
    own_call(resolved)()
    assert seen == [(1, 112, 96, 3)]


def test_lfw_of_a_model_without_an_onnx_form_is_kept_by_its_weights_file(tmp_path: Path) -> None:
    from facekd.evaluation.embed import TorchEmbedder
    from facekd.experiments.board_forms import BoardSpec, Entry, measure_lfw
    from facekd.hub.resolved import ResolvedModel
    from facekd.models.base import build_backbone
    from facekd.preprocessing import Preprocessing

    torch.manual_seed(0)
    net, pre = build_backbone("student5").eval(), Preprocessing(template="112x96")
    weights = tmp_path / "own.dat"  # a library's own weights file: its bytes name the model
    weights.write_bytes(b"weights v1")
    lfw = make_lfw(tmp_path / "lfw", folds=10, seed=0)

    def measure(log: list[str]) -> Entry:
        e = Entry(BoardSpec("own", "own"), resolved=ResolvedModel(
            "own", pre, path=weights, embedder_factory=lambda device: TorchEmbedder(net, pre, name="own", device="cpu")))
        measure_lfw(e, "own runtime", None, lfw, "mtcnn", tmp_path / "w", log.append)
        return e

    first, second = [], []
    acc = measure(first).lfw["own runtime"]["flip"].result.accuracy
    assert 0.5 <= acc <= 1.0 and not any("kept" in line for line in first)
    assert measure(second).lfw["own runtime"]["flip"].result.accuracy == pytest.approx(acc)
    assert any("kept by an earlier run" in line for line in second)
    weights.write_bytes(b"weights v2")  # other weights: measured again
    third: list[str] = []
    measure(third)
    assert not any("kept" in line for line in third)


def _crop_folder(root: Path, size: tuple[int, int], value: int, n: int = 12) -> Path:
    """``n`` flat grey aligned crops of ``size`` (height, width), every pixel ``value``."""
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((*size, 3), value, np.uint8)).save(root / f"{i:02d}.png")
    return root


def test_each_model_is_calibrated_on_the_first_calib_source_its_template_can_read(tmp_path: Path) -> None:
    from facekd.experiments.board_forms import calibration
    from facekd.preprocessing import Preprocessing

    sphere = _crop_folder(tmp_path / "sphere", (112, 96), 51)  # (51 - 127.5) / 128 = -0.59765625
    facenet = _crop_folder(tmp_path / "facenet", (160, 160), 229)  # (229 - 127.5) / 128 = 0.79296875
    fn, mfn = Preprocessing(template="facenet160"), Preprocessing(template="112x96")
    assert calibration([], mfn, {}) == (None, "no calibration faces given (--calib)")

    # FaceNet's 160x160 crops cannot be cut from aligned 112x96 faces: the faces were
    # given, so the note must say why they do not serve, not that they are missing.
    cp, why = calibration([sphere], fn, {})
    assert cp is None and why.startswith("INT8 not tried: it reads facenet160 crops")
    assert "cannot convert a 112x96 crop to the facenet160 template" in why

    for sources in ([sphere, facenet], [facenet, sphere]):
        cache: dict = {}
        (x, probe), why = calibration(sources, fn, cache)
        assert why == "" and x.shape[1:] == (3, 160, 160) and probe.shape[1:] == (3, 160, 160)
        assert np.allclose(x, 0.79296875) and np.allclose(probe, 0.79296875)
        (x, _), _ = calibration(sources, mfn, cache)
        assert x.shape[1:] == (3, 112, 96) and np.allclose(x, -0.59765625)
        # 12 crops: every fifth is a probe face, held out of calibration
        assert len(x) == 9
    # A source that is not there fails the board, not one model's note.
    with pytest.raises(FacekdError, match="not a folder of aligned crops"):
        calibration([tmp_path / "missing.fkpack"], fn, {})


def test_plot_labels_of_crowded_points_overlap_neither_each_other_nor_the_markers() -> None:
    """Six models within 0.1 point and 10% of each other (the crowded top of a real board):
    after placement no two labels' boxes overlap, none covers a point, all stay in the axes,
    and the labels keep their points' order from bottom to top."""
    from facekd.evaluation.plots import pyplot
    from facekd.experiments.board_view import _declutter

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs, ys = [1.0, 1.05, 1.1, 1.15, 1.2, 5.0], [99.0, 99.02, 98.98, 99.05, 99.01, 95.0]
    ax.scatter(xs, ys)
    ax.set_xscale("log")
    labels = [ax.annotate(f"a model with a long name {i}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
              for i, (x, y) in enumerate(zip(xs, ys))]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    before = [t.get_window_extent(r) for t in labels]
    assert any(a.overlaps(b) for i, a in enumerate(before) for b in before[i + 1:])  # crowded as drawn
    _declutter(fig, ax, labels)
    fig.canvas.draw()
    boxes = [t.get_window_extent(r) for t in labels]
    frame = ax.get_window_extent(r)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    for (px, py) in ax.transData.transform(list(zip(xs, ys))):
        assert not any(b.x0 <= px <= b.x1 and b.y0 <= py <= b.y1 for b in boxes)
    assert all(frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert boxes[-1].y0 == pytest.approx(before[-1].y0)  # a label with room keeps its place
    # The crowded five keep their points' vertical order, so their grey lines do not cross.
    crowded = range(5)
    assert sorted(crowded, key=lambda i: boxes[i].y0) == sorted(crowded, key=lambda i: ys[i])
    plt.close(fig)


def test_the_zoom_panel_holds_exactly_the_rows_near_the_reference() -> None:
    from facekd.experiments.board import Board, BoardRow
    from facekd.experiments.board_view import near_reference

    def row(name, ms, flip):
        return BoardRow(name, "facekd", "int8", None, None, None, None, ms, None, flip, None, None)

    rows = [row("mobilefacenet", 4.0, 99.0), row("half_as_fast", 2.0, 98.8), row("at_the_edge", 5.0, 98.4),
            row("too_slow", 5.1, 99.2), row("too_weak", 1.0, 98.3), row("no_timing", None, 99.0)]
    ref, near = near_reference(Board(rows, {}, ""), "mobilefacenet")
    assert ref is rows[0]
    # 1.25 x 4 ms = 5 ms and 99.0 - 0.6 = 98.4 % are the edges, both inside.
    assert [r.name for r in near] == ["mobilefacenet", "half_as_fast", "at_the_edge"]
    assert near_reference(Board(rows[1:], {}, ""), "mobilefacenet") == (None, [])
