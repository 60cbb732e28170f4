import io

import numpy as np
import pytest
from PIL import Image

from facekd.data.identity import IdentityFolderDataset, PackDataset
from facekd.data.pack import Pack, build_pack, write_pack
from facekd.errors import FacekdError


def _jpeg(v: int, size=(112, 96)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), v, np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_roundtrip_and_pickling(tmp_path):
    import pickle

    items = [("a/1.jpg", 0, _jpeg(10)), ("a/2.jpg", 0, _jpeg(50)), ("b/1.jpg", 1, _jpeg(200))]
    write_pack(tmp_path / "t.fkpack", items, ["a", "b"], "112x96", {"k": 1})
    pack = Pack(tmp_path / "t.fkpack")
    assert len(pack) == 3 and pack.identities == ["a", "b"] and pack.template == "112x96"
    assert list(pack.labels) == [0, 0, 1] and pack.files == ["a/1.jpg", "a/2.jpg", "b/1.jpg"]
    assert pack.raw(1) == items[1][2]
    assert abs(int(pack.image(2)[50, 50, 0]) - 200) <= 2
    clone = pickle.loads(pickle.dumps(pack))  # what a DataLoader worker receives
    assert clone.raw(0) == items[0][2]
    ds = PackDataset(pack)
    img, label = ds[2]
    assert img.shape == (112, 96, 3) and label == 1


def test_corrupt_packs_are_named(tmp_path):
    write_pack(tmp_path / "t.fkpack", [("a/1.jpg", 0, _jpeg(10))], ["a"], "112x96")
    data = (tmp_path / "t.fkpack").read_bytes()
    (tmp_path / "cut.fkpack").write_bytes(data[:-10])
    (tmp_path / "junk.fkpack").write_bytes(b"hello world, not a pack at all")
    with pytest.raises(FacekdError, match="cut.fkpack: truncated facekd pack"):
        Pack(tmp_path / "cut.fkpack")
    with pytest.raises(FacekdError, match="junk.fkpack: not a facekd pack"):
        Pack(tmp_path / "junk.fkpack")
    with pytest.raises(FacekdError, match="pack not found"):
        Pack(tmp_path / "none.fkpack")


def test_build_pack_merges_identities_across_roots(tmp_path):
    for root, ident, v in [("r1", "007", 10), ("r1", "009", 20), ("r2", "007", 30)]:
        (tmp_path / root / ident).mkdir(parents=True, exist_ok=True)
        (tmp_path / root / ident / f"{root}.jpg").write_bytes(_jpeg(v))
    header = build_pack([tmp_path / "r1", tmp_path / "r2"], tmp_path / "m.fkpack", quality=None)
    assert header["identities"] == ["007", "009"]
    pack = Pack(tmp_path / "m.fkpack")
    assert sorted(zip(pack.files, pack.labels.tolist())) == [("007/r1.jpg", 0), ("007/r2.jpg", 0), ("009/r1.jpg", 1)]
    ds = IdentityFolderDataset([tmp_path / "r1", tmp_path / "r2"])
    assert ds.identities == ["007", "009"] and sorted(ds.labels.tolist()) == [0, 0, 1]


def test_build_pack_refuses_unaligned_crops(tmp_path):
    (tmp_path / "r" / "x").mkdir(parents=True)
    (tmp_path / "r" / "x" / "big.jpg").write_bytes(_jpeg(1, size=(250, 250)))
    with pytest.raises(FacekdError, match="not an aligned crop size"):
        build_pack([tmp_path / "r"], tmp_path / "p.fkpack")


def test_facekd_pack_takes_a_teachers_own_crops(tmp_path, capsys):
    from facekd.cli import main

    for ident, v in [("1", 40), ("2", 90)]:
        (tmp_path / "fn" / ident).mkdir(parents=True)
        (tmp_path / "fn" / ident / "a.jpg").write_bytes(_jpeg(v, size=(160, 160)))
    assert main(["pack", str(tmp_path / "fn"), "--out", str(tmp_path / "fn.fkpack")]) == 0
    pack = Pack(tmp_path / "fn.fkpack")
    assert pack.template == "facenet160" and pack.files == ["1/a.jpg", "2/a.jpg"]
    assert abs(int(pack.image(1).mean()) - 90) <= 2
