"""`facekd gallery ...` and `facekd identify` on real LFW photos with a shipped student
(YuNet detection, so only the shared data and weights are needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facekd.cli import main
from facekd.identify.gallery import Gallery
from facekd.identify.threshold import IdentThresholdChoice, store_ident_threshold

REPO = Path(__file__).resolve().parent.parent
STUDENT = REPO / "weights" / "student5_mobilefacenet_casia.onnx"
OTHER = REPO / "weights" / "student5_facenet_casia.onnx"
PEOPLE = ["Aaron_Peirsol", "Abdullah_Gul", "Alejandro_Toledo"]


@pytest.fixture
def known(lfw_dir, tmp_path, yunet_weights) -> Path:
    """known/<name>/ with each person's first two LFW photos, plus a text file named .jpg."""
    if not STUDENT.is_file():
        pytest.skip(f"{STUDENT} not found")
    root = tmp_path / "known"
    for name in PEOPLE:
        (root / name).mkdir(parents=True)
        for i in (1, 2):
            shutil.copy(lfw_dir / name / f"{name}_000{i}.jpg", root / name)
    (root / PEOPLE[1] / "notes.jpg").write_text("not an image")
    return root


@pytest.fixture
def model(tmp_path) -> Path:
    """The student with an identification threshold stored (0.35, a hand-set value)."""
    out = tmp_path / "student.onnx"
    shutil.copyfile(STUDENT, out)
    store_ident_threshold(out, IdentThresholdChoice(thresholds={"best": 0.35, "mean": 0.3}, target_fpir=0.01))
    return out


def test_enroll_identify_remove(known, model, lfw_dir, tmp_path, capsys):
    g = tmp_path / "g.db"
    report = tmp_path / "enrol.json"
    assert main(["gallery", "enroll", str(g), str(known), "--model", str(model), "--json", str(report)]) == 0
    enrolments = json.loads(report.read_text())["enrolments"]
    assert [e["person"]["name"] for e in enrolments] == PEOPLE
    assert [len(e["face_ids"]) for e in enrolments] == [2, 2, 2]
    assert enrolments[1]["errors"][0]["photo"].endswith("notes.jpg")  # reported, not fatal
    assert "notes.jpg" in capsys.readouterr().err

    with Gallery.open(g) as gal:  # the threshold was copied from the model at creation
        assert gal.threshold("best") == 0.35 and gal.threshold("mean") == 0.3
        assert all(len(f.crop_sha256) == 64 and f.detector == "yunet" for f in gal.faces())

    probes = [lfw_dir / "Aaron_Peirsol" / "Aaron_Peirsol_0003.jpg", lfw_dir / "AJ_Cook" / "AJ_Cook_0001.jpg",
              known / PEOPLE[1] / "notes.jpg"]
    out = tmp_path / "who.json"
    rc = main(["identify", str(g), *map(str, probes), "--top-k", "2", "--json", str(out)])
    assert rc == 1  # one probe was not a photo
    res = json.loads(out.read_text())
    assert [r["photo"] for r in res] == list(map(str, probes))
    assert res[0]["identity"] == "Aaron_Peirsol" and res[0]["score"] >= 0.35
    assert len(res[0]["matches"]) == 2 and res[0]["matches"][0]["score"] > res[0]["matches"][1]["score"]
    assert res[1]["identity"] is None and res[1]["score"] < 0.35  # nobody enrolled: unknown
    assert "error" in res[2] and "identity" not in res[2]

    assert main(["gallery", "remove", str(g), "Aaron_Peirsol"]) == 0
    assert main(["identify", str(g), str(probes[0]), "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["identity"] is None
    capsys.readouterr()
    assert main(["gallery", "info", str(g), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["people"] == 2 and info["faces"] == 4 and info["model"]["name"] == "student.onnx"


def test_another_model_is_refused(known, model, tmp_path, capsys):
    g = tmp_path / "g.db"
    assert main(["gallery", "enroll", str(g), str(known / PEOPLE[0]), "--model", str(model)]) == 0
    capsys.readouterr()
    assert main(["gallery", "enroll", str(g), str(known / PEOPLE[2]), "--model", str(OTHER)]) == 1
    assert "gallery's model is fixed" in capsys.readouterr().err
    moved = tmp_path / "moved.onnx"
    shutil.copyfile(OTHER, moved)
    assert main(["identify", str(g), str(known / PEOPLE[0] / f"{PEOPLE[0]}_0001.jpg"), "--model", str(moved)]) == 1
    assert "is not the model this gallery was built with" in capsys.readouterr().err


def test_a_photo_needs_a_name(known, model, tmp_path, capsys):
    photo = known / PEOPLE[0] / f"{PEOPLE[0]}_0001.jpg"
    assert main(["gallery", "enroll", str(tmp_path / "g.db"), str(photo), "--model", str(model)]) == 1
    assert "needs --name" in capsys.readouterr().err
    assert main(["gallery", "enroll", str(tmp_path / "g.db"), str(photo), "--model", str(model), "--name", "A"]) == 0


def test_a_shipped_model_is_named_like_anywhere_else(known, tmp_path, capsys):
    """`--model NAME` of a shipped ONNX student builds the gallery on that very file; a
    registered backbone (no ONNX form) is refused at parse time with the export command."""
    from facekd.identify.model import file_sha256

    g = tmp_path / "g.db"
    assert main(["gallery", "enroll", str(g), str(known / PEOPLE[0]), "--model", "student5_mobilefacenet_casia"]) == 0
    with Gallery.open(g) as gal:
        assert gal.model.sha256 == file_sha256(STUDENT)
    capsys.readouterr()
    for cmd in (["gallery", "enroll", str(tmp_path / "h.db"), str(known / PEOPLE[0])],
                ["identify", str(g), str(STUDENT)], ["serve", "--gallery", str(tmp_path / "h.db")]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--model", "mobilefacenet"])
        assert exc.value.code == 2
        assert "facekd export --model mobilefacenet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["gallery", "enroll", str(tmp_path / "h.db"), str(known / PEOPLE[0]), "--model", "no_such_model"])
    assert "student5_mobilefacenet_casia" in capsys.readouterr().err  # the names that would work
    assert not (tmp_path / "h.db").exists()


def test_eval_lfw_ident_stores_a_threshold(lfw_dir, yunet_weights, tmp_path, capsys):
    """The whole `facekd eval lfw-ident` path on a 7-person LFW-layout folder (raw photos,
    aligned with YuNet into the cache): figures printed, JSON written, thresholds stored
    in the model and then copied by a new gallery."""
    from facekd.identify.threshold import read_ident_threshold

    data = tmp_path / "lfw-mini"
    for name in [*PEOPLE, "Alvaro_Uribe", "Amelie_Mauresmo", "Andre_Agassi"]:
        (data / name).mkdir(parents=True)
        for i in (1, 2, 3):
            shutil.copy(lfw_dir / name / f"{name}_000{i}.jpg", data / name)
    (data / "Zed_Single").mkdir()
    shutil.copy(lfw_dir / "AJ_Cook" / "AJ_Cook_0001.jpg", data / "Zed_Single")
    model = tmp_path / "m.onnx"
    shutil.copyfile(STUDENT, model)
    out, cache = tmp_path / "ident.json", tmp_path / "emb.npy"
    args = ["eval", "lfw-ident", "--model", str(model), "--data", str(data), "--trials", "3", "--embeddings",
            str(cache), "--json", str(out)]
    assert main([*args, "--store-threshold"]) == 0
    res = json.loads(out.read_text())
    assert res["photos"] == 19 and len(res["results"]) == 4  # enrolled 1 and 3, scoring best and mean
    one_best = next(r for r in res["results"] if r["enrolled"] == 1 and r["scoring"] == "best")
    t = one_best["trials"][0]
    assert t["gallery_people"] == 3 and t["mated"] == 6 and t["non_mated"] == 10
    assert 50 <= one_best["rank1_mean"] <= 100  # a real model on 3 people
    choice = read_ident_threshold(model)
    assert choice.thresholds["best"] == one_best["threshold_median"]["0.01"]
    assert cache.is_file()
    assert main(args) == 0  # a second run reads the cached embeddings
    assert "read from" in capsys.readouterr().out
    g = Gallery.create(tmp_path / "g.db", model)
    assert g.threshold("best") == choice.thresholds["best"]
