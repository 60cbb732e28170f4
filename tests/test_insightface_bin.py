import io
import pickle

import numpy as np
import pytest
from PIL import Image

from facekd.data.insightface_bin import read_bin
from facekd.errors import FacekdError


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((112, 112, 3), value, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("protocol", [2, 4])
def test_reads_images_and_flags(tmp_path, protocol):
    images = [_jpeg(v) for v in (10, 20, 30, 40)]
    p = tmp_path / "lfw.bin"
    p.write_bytes(pickle.dumps((images, [True, False]), protocol=protocol))
    vb = read_bin(p)
    assert vb.images == images and vb.issame == [True, False] and len(vb) == 2


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_refuses_code_execution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.bin"
    p.write_bytes(pickle.dumps(([_Evil(), b"x"], [True])))
    with pytest.raises(FacekdError, match=r"evil.bin: not a valid insightface .bin \(refusing to load posix.system"):
        read_bin(p)
    assert not (tmp_path / "PWNED").exists()


def test_refuses_numpy_objects(tmp_path):
    p = tmp_path / "np.bin"
    p.write_bytes(pickle.dumps(([np.zeros(3)], [True])))
    with pytest.raises(FacekdError, match="refusing to load numpy"):
        read_bin(p)


@pytest.mark.parametrize(
    "payload, message",
    [
        (([b"a", b"b", b"c"], [True]), r"3 images for 1 pairs"),
        (([b"a", b"b"], [True], 3), "expected a pickled"),
        (([b"a", "b"], [True]), "encoded bytes"),
        (([], []), "holds no pairs"),
    ],
)
def test_malformed_structure(tmp_path, payload, message):
    p = tmp_path / "bad.bin"
    p.write_bytes(pickle.dumps(payload))
    with pytest.raises(FacekdError, match=message):
        read_bin(p)


def test_truncated_and_missing(tmp_path):
    p = tmp_path / "cut.bin"
    data = pickle.dumps(([_jpeg(1), _jpeg(2)], [True]))
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(FacekdError, match="cut.bin: not a valid insightface .bin"):
        read_bin(p)
    with pytest.raises(FacekdError, match="file not found"):
        read_bin(tmp_path / "none.bin")
