"""End to end on real LFW photos: align a small View-2 subset, evaluate the reference model
from the folder, a pack and an insightface .bin, through the command line."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekd.cli import main
from facekd.data.lfw import lfw_image

PER_HALF = 15  # same and different pairs per fold, from folds 1 and 2 of the real pairs.txt


@pytest.fixture(scope="module")
def mini_lfw(lfw_dir, tmp_path_factory) -> Path:
    """A 2-fold LFW folder (60 pairs) built from the official pairs.txt, unaligned."""
    lines = (lfw_dir / "pairs.txt").read_text().splitlines()[1:]
    chosen = []
    for fold in range(2):
        block = lines[fold * 600 : (fold + 1) * 600]
        chosen += block[:PER_HALF] + block[300 : 300 + PER_HALF]
    root = tmp_path_factory.mktemp("mini") / "lfw"
    root.mkdir()
    (root / "pairs.txt").write_text(f"2\t{PER_HALF}\n" + "\n".join(chosen) + "\n")
    for line in chosen:
        p = line.split()
        rels = [lfw_image(p[0], int(p[1])), lfw_image(p[0], int(p[2]))] if len(p) == 3 else \
               [lfw_image(p[0], int(p[1])), lfw_image(p[2], int(p[3]))]
        for rel in rels:
            (root / rel).parent.mkdir(exist_ok=True)
            shutil.copy(lfw_dir / rel, root / rel)
    return root


@pytest.fixture(scope="module")
def aligned_mini(mini_lfw) -> Path:
    out = mini_lfw.parent / "aligned"
    assert main(["align", str(mini_lfw), str(out), "--template", "112x96", "--workers", "2"]) == 0
    return out


def _eval(capsys, tmp_path, weights, data, *extra) -> dict:
    out = tmp_path / "r.json"
    code = main(["eval", "lfw", "--model", "mobilefacenet", "--weights", str(weights), "--data", str(data),
                 "--json", str(out), *extra])
    assert code == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def test_reference_model_on_aligned_folder(capsys, tmp_path, aligned_mini, mobilefacenet_weights):
    report = json.loads((aligned_mini / "align_report.json").read_text())
    assert report["unreadable"] == [] and report["images"] == report["aligned"] + report["fallback"]
    res = _eval(capsys, tmp_path, mobilefacenet_weights, aligned_mini, "--flip", "--plot", str(tmp_path / "roc.png"))
    assert res["pairs"] == 4 * PER_HALF and len(res["folds"]) == 2
    assert res["accuracy"] >= 90.0, res  # 99% on full LFW; a broken alignment lands near 50-80%
    assert res["auc"] >= 0.97
    assert set(res["tar_at_far"]) == {"0.001", "0.01"} and res["flip_fusion"] == "concat"
    assert res["embedding_dim"] == 256  # image and mirror concatenated
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "±" in printed and "AUC" in printed


def test_unaligned_folder_is_aligned_on_the_fly(capsys, tmp_path, mini_lfw, aligned_mini, mobilefacenet_weights):
    direct = _eval(capsys, tmp_path, mobilefacenet_weights, aligned_mini)
    on_the_fly = _eval(capsys, tmp_path, mobilefacenet_weights, mini_lfw)
    assert on_the_fly["aligned_copy"] and on_the_fly["accuracy"] == pytest.approx(direct["accuracy"])


def test_pack_and_bin_give_the_same_scores(capsys, tmp_path, aligned_mini, mobilefacenet_weights):
    folder = _eval(capsys, tmp_path, mobilefacenet_weights, aligned_mini)
    pack = tmp_path / "lfw.fkpack"
    assert main(["pack", str(aligned_mini), "--out", str(pack), "--quality", "0", "--pairs-only"]) == 0
    from_pack = _eval(capsys, tmp_path, mobilefacenet_weights, pack)
    assert from_pack["accuracy"] == pytest.approx(folder["accuracy"])
    assert from_pack["auc"] == pytest.approx(folder["auc"], abs=1e-9)

    # insightface layout: 112x112 ArcFace crops (our 112x96 crops padded 8 px a side, PNG so
    # no recompression), consecutive pairs, folds in order.
    lines = (aligned_mini / "pairs.txt").read_text().splitlines()[1:]
    images, issame = [], []
    for line in lines:
        p = line.split()
        rels = [lfw_image(p[0], int(p[1])), lfw_image(p[0], int(p[2]))] if len(p) == 3 else \
               [lfw_image(p[0], int(p[1])), lfw_image(p[2], int(p[3]))]
        for rel in rels:
            crop = np.asarray(Image.open(aligned_mini / rel).convert("RGB"))
            wide = np.zeros((112, 112, 3), np.uint8)
            wide[:, 8:104] = crop
            buf = io.BytesIO()
            Image.fromarray(wide).save(buf, "PNG")
            images.append(buf.getvalue())
        issame.append(len(p) == 3)
    binfile = tmp_path / "lfw.bin"
    binfile.write_bytes(pickle.dumps((images, issame), protocol=4))
    # A .bin has 10 consecutive folds; compare with the folder split the same way.
    from facekd.evaluation.pairs import evaluate_pairs
    from facekd.hub import load_embedder

    emb = load_embedder("mobilefacenet", mobilefacenet_weights)
    from_bin = evaluate_pairs(emb, binfile).result
    assert from_bin.pairs == 4 * PER_HALF
    assert from_bin.auc == pytest.approx(folder["auc"], abs=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "lfw", "--model", "resnet9000", "--data", "."], "unknown model 'resnet9000'; known:"),
        (["eval", "lfw", "--model", "mobilefacenet", "--weights", "/nope.ckpt", "--data", "."], "/nope.ckpt: weights file not found"),
        (["eval", "lfw", "--model", "missing.onnx", "--data", "."], "missing.onnx: ONNX model not found"),
        (["align", "/no/such/dir", "/tmp/x"], "/no/such/dir: source folder does not exist"),
        (["pack", "/no/such/dir", "--out", "/tmp/x.fkpack"], "/no/such/dir: dataset folder does not exist"),
    ],
)
def test_cli_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_bad_data_folder(capsys, tmp_path, mobilefacenet_weights):
    (tmp_path / "pairs.txt").write_text("10 300\nAl 1 2\n")
    assert main(["eval", "lfw", "--model", "mobilefacenet", "--weights", str(mobilefacenet_weights),
                 "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pairs.txt: header says 10 folds" in err and "Traceback" not in err


def test_onnx_embedder_matches_pytorch(capsys, tmp_path, aligned_mini, mobilefacenet_weights):
    """An .onnx model (with facekd preprocessing metadata) scores like the PyTorch model."""
    import warnings

    import onnx
    import torch

    from facekd.onnx_metadata import PREPROCESSING_META_KEY as ONNX_META_KEY
    from facekd.models import build_backbone, load_backbone_weights

    model = load_backbone_weights(build_backbone("mobilefacenet"), mobilefacenet_weights).eval()
    path = tmp_path / "mfn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 112, 96), path, input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "n"}}, dynamo=False)
    proto = onnx.load(path)
    meta = {"template": "112x96", "mean": 127.5, "std": 128.0, "flip_fusion": "concat", "subtract_fold_mean": True}
    proto.metadata_props.add(key=ONNX_META_KEY, value=json.dumps(meta))
    onnx.save(proto, path)
    torch_res = _eval(capsys, tmp_path, mobilefacenet_weights, aligned_mini, "--flip")
    out = tmp_path / "onnx.json"
    assert main(["eval", "lfw", "--model", str(path), "--data", str(aligned_mini), "--flip", "--json", str(out)]) == 0
    onnx_res = json.loads(out.read_text())
    assert onnx_res["embedding_dim"] == 256 and onnx_res["subtract_fold_mean"] is True
    assert onnx_res["accuracy"] == pytest.approx(torch_res["accuracy"])
    assert onnx_res["auc"] == pytest.approx(torch_res["auc"], abs=1e-4)


def test_plain_and_flip_from_one_pass_match_two_evaluations(aligned_mini, mobilefacenet_weights):
    from facekd.evaluation.pairs import evaluate_pairs, evaluate_pairs_plain_and_flip
    from facekd.hub import load_embedder

    emb = load_embedder("mobilefacenet", mobilefacenet_weights)
    both = evaluate_pairs_plain_and_flip(emb, aligned_mini)
    for mode, flip in (("plain", False), ("flip", True)):
        one = evaluate_pairs(emb, aligned_mini, flip=flip)
        assert both[mode].flip is flip and both[mode].embedding_dim == one.embedding_dim == (256 if flip else 128)
        assert both[mode].result.accuracy == pytest.approx(one.result.accuracy)
        assert both[mode].result.auc == pytest.approx(one.result.auc, abs=1e-6)
