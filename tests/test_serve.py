"""facekd serve through real HTTP: a `facekd serve` child process on 127.0.0.1 (and, for
the other-model gallery, uvicorn in a thread), requests with httpx."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import UploadFile
from PIL import Image

from facekd.identify.gallery import Gallery
from facekd.serve.app import create_app, upload_name
from facekd.serve.images import decode_upload, sniff_format
from facekd.serve.errors import ApiError
from facekd.serve.process import free_port
from serve_helpers import running_server, weights_dir
from facekd.serve.security import ApiKeyCheck, check_binding, is_loopback, read_api_keys
from facekd.serve.settings import ServeSettings
from facekd.errors import FacekdError

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "weights" / "student5_mobilefacenet_casia.onnx"
OTHER_MODEL = REPO / "weights" / "student5_facenet_casia.onnx"
KEY = "test-key-0123456789abcdef"
MAX_BODY_MB = 2


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _no_face_jpeg() -> bytes:
    y, x = np.mgrid[0:240, 0:320]
    return _jpeg(np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "keys").write_text(f"# test keys\n{KEY}\n")
    args = ["--model", str(MODEL), "--gallery", str(tmp / "g.sqlite"), "--api-key-file", str(tmp / "keys"),
            "--max-body-mb", str(MAX_BODY_MB), "--detector", "yunet", "--workers-threads", "2"]
    with running_server(tmp, args) as proc:
        yield proc


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60.0) as c:
        yield c


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]["message"]


# --- security --------------------------------------------------------------------------


def test_no_key_and_wrong_key_are_401(server):
    photo = {"photo": ("a.jpg", _no_face_jpeg(), "image/jpeg")}
    msg = _error(httpx.post(f"{server.url}/v1/embed", files=photo), 401, "missing_api_key")
    assert "X-API-Key" in msg
    _error(httpx.post(f"{server.url}/v1/embed", files=photo, headers={"X-API-Key": KEY[:-1] + "X"}), 401,
           "invalid_api_key")
    _error(httpx.get(f"{server.url}/v1/people", headers={"X-API-Key": ""}), 401, "invalid_api_key")
    # Health and the API's description stay open; the description lists every route.
    assert httpx.get(f"{server.url}/v1/health").json()["api_key_required"] is True
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/embed", "/v1/verify", "/v1/identify", "/v1/people", "/v1/people/{person_id}",
            "/v1/people/{person_id}/faces", "/v1/health"} <= set(paths)


def test_refuses_to_start_on_all_interfaces_without_a_key_file(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "facekd.cli", "serve", "--model", str(MODEL), "--gallery", str(tmp_path / "g.sqlite"),
         "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 1
    assert "refusing to serve on 0.0.0.0 without API keys" in r.stderr and "--api-key-file" in r.stderr
    assert not (tmp_path / "g.sqlite").exists()  # refused before anything was opened


def test_binding_rule_and_key_check():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("192.168.1.4")
    assert not is_loopback("example.org")
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", Path("keys"))
    with pytest.raises(FacekdError, match="refusing"):
        check_binding("::", None)
    check = ApiKeyCheck((b"a" * 16, b"b" * 16))
    assert check.matches("b" * 16) and not check.matches("b" * 15) and not check.matches("c" * 16)


def test_a_key_that_no_header_can_carry_is_refused_at_start(tmp_path):
    # A header arrives as Latin-1 text: a non-ASCII key could never match, so it would lock everyone out.
    for key in ("clé-0123456789abcdef", "tab\tin-0123456789abcdef"):
        (tmp_path / "keys").write_text(f"{key}\n", encoding="utf-8")
        with pytest.raises(FacekdError, match="line 1: .*printable ASCII"):
            read_api_keys(tmp_path / "keys")
    (tmp_path / "keys").write_text(f"  {KEY}  \n")
    assert read_api_keys(tmp_path / "keys") == (KEY.encode(),)


# --- bad inputs ------------------------------------------------------------------------


def test_body_over_the_limit_is_413_declared_or_streamed(client):
    big = b"\xff\xd8\xff" + b"\0" * (MAX_BODY_MB * 2**20 + 10)
    msg = _error(client.post("/v1/embed", files={"photo": ("big.jpg", big, "image/jpeg")}), 413, "body_too_large")
    assert f"{MAX_BODY_MB} MiB" in msg

    def chunks():  # no Content-Length: a well-formed multipart body, counted as it streams
        yield b'--b\r\nContent-Disposition: form-data; name="photo"; filename="a.jpg"\r\n\r\n'
        for _ in range(MAX_BODY_MB * 4 + 4):
            yield b"x" * 2**18
        yield b"\r\n--b--\r\n"

    r = client.post("/v1/embed", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    _error(r, 413, "body_too_large")


def test_decompression_bomb_is_refused_before_decoding(client):
    buf = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buf, format="PNG")  # 48 Mpx in a few KB
    assert len(buf.getvalue()) < 100_000
    msg = _error(client.post("/v1/embed", files={"photo": ("bomb.png", buf.getvalue(), "image/png")}), 422,
                 "image_too_large")
    assert "8000x6000" in msg and "40 Mpx" in msg


def test_truncated_jpeg_text_file_and_no_face(client):
    whole = _no_face_jpeg()
    msg = _error(client.post("/v1/embed", files={"photo": ("cut.jpg", whole[: len(whole) // 2], "image/jpeg")}), 422,
                 "unreadable_image")
    assert "cut.jpg" in msg and "truncated" in msg
    msg = _error(client.post("/v1/embed", files={"photo": ("face.jpg", b"just some text\n", "image/jpeg")}), 415,
                 "unsupported_image_format")
    assert "face.jpg" in msg and "text" in msg
    msg = _error(client.post("/v1/embed", files={"photo": ("wall.jpg", whole, "image/jpeg")}), 422, "no_face")
    assert "wall.jpg" in msg and "no face found" in msg


def test_unknown_person_route_method_and_missing_field(client):
    assert "id 999999" in _error(client.get("/v1/people/999999/faces"), 404, "person_not_found")
    _error(client.delete("/v1/people/999999"), 404, "person_not_found")
    _error(client.post("/v1/people/999999/faces", files={"photos": ("a.jpg", _no_face_jpeg(), "image/jpeg")}),
           404, "person_not_found")
    _error(client.get("/v1/nothing"), 404, "not_found")
    _error(client.put("/v1/people"), 405, "method_not_allowed")
    assert "photo" in _error(client.post("/v1/embed", data={"x": "1"}), 422, "invalid_request")
    assert "top_k" in _error(client.post("/v1/identify", data={"top_k": "0"},
                                         files={"photo": ("a.jpg", _no_face_jpeg(), "image/jpeg")}),
                             422, "invalid_request")


def test_blank_or_control_character_name_is_422_before_any_image_work(client, lfw_dir):
    # A real face, so that only the name can be what is refused (a blank name was a 500).
    photo = sorted((lfw_dir / "Colin_Powell").glob("*.jpg"))[0]
    for name in ("   ", "Ada\x00", "Ada\nLovelace"):
        r = client.post("/v1/people", data={"name": name}, files={"photos": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert "name" in _error(r, 422, "invalid_name")
    assert all(p["name"].isprintable() for p in client.get("/v1/people").json()["people"])


def test_an_upload_is_named_without_control_characters():
    # The name is stored as the face's source: PostgreSQL refuses a NUL (a 500), a newline forges lines.
    upload = UploadFile(io.BytesIO(b""), filename="a\x00b\n.jpg")
    assert upload_name("photos[0]", upload) == "photos[0] (a?b?.jpg)"
    assert upload_name("photo", UploadFile(io.BytesIO(b""))) == "photo"


def test_decode_upload_whitelist():
    assert [sniff_format(b) for b in (b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBPVP8 ", b"BMxx")] == [
        "JPEG", "PNG", "WEBP", "BMP"]
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    with pytest.raises(ApiError, match="GIF"):
        decode_upload(gif.getvalue(), "photo", 1000)
    for fmt in ("PNG", "WEBP", "BMP"):
        buf = io.BytesIO()
        Image.new("RGB", (20, 10), (10, 20, 30)).save(buf, format=fmt)
        assert decode_upload(buf.getvalue(), "photo", 1000).shape == (10, 20, 3)


# --- a gallery built with another model -------------------------------------------------


class ThreadedServer:
    """uvicorn serving ``app`` on 127.0.0.1 from a thread of this process."""

    def __init__(self, app) -> None:
        self.url = f"http://127.0.0.1:{(port := free_port())}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_gallery_of_another_model_is_409(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKD_WEIGHTS", str(weights_dir()))
    # create_app lowers Pillow's process-wide limit; put it back for the tests after this one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    Gallery.create(tmp_path / "other.sqlite", OTHER_MODEL).close()
    # A gallery handed in already opened (how a server is given another store).
    app = create_app(ServeSettings(model=MODEL, gallery="unused", detectors=("yunet",), worker_threads=1),
                     gallery=Gallery.open(tmp_path / "other.sqlite"))
    with ThreadedServer(app) as s:
        msg = _error(httpx.post(f"{s.url}/v1/identify", files={"photo": ("p.jpg", _no_face_jpeg(), "image/jpeg")}),
                     409, "model_mismatch")
        assert OTHER_MODEL.name in msg and MODEL.name in msg
        _error(httpx.post(f"{s.url}/v1/people", data={"name": "x"},
                          files={"photos": ("p.jpg", _no_face_jpeg(), "image/jpeg")}), 409, "model_mismatch")
        assert httpx.get(f"{s.url}/v1/people").json()["total"] == 0
        assert httpx.get(f"{s.url}/").status_code == 200  # the placeholder page
    assert Image.MAX_IMAGE_PIXELS == 40_000_000


def test_keyless_server_refuses_other_hosts_and_cross_origin_requests(tmp_path, monkeypatch):
    """Without keys the server trusts loopback, and a browser is on loopback too: a page from
    elsewhere must not drive it (a cross-origin form POST), nor read it (DNS rebinding)."""
    monkeypatch.setenv("FACEKD_WEIGHTS", str(weights_dir()))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    app = create_app(ServeSettings(model=MODEL, gallery=str(tmp_path / "g.sqlite"), detectors=("yunet",),
                                   worker_threads=1))
    with ThreadedServer(app) as s:
        photo = {"photos": ("p.jpg", _no_face_jpeg(), "image/jpeg")}
        evil = {"Origin": "http://evil.example"}
        assert "evil.example" in _error(httpx.post(f"{s.url}/v1/people", data={"name": "x"}, files=photo,
                                                   headers=evil), 403, "cross_origin")
        for host in ("rebound.example", "[::1", ""):
            _error(httpx.get(f"{s.url}/v1/people", headers={"Host": host}), 403, "host_not_loopback")
        _error(httpx.get(f"{s.url}/v1/people", headers={"Origin": "http://[::1"}), 403, "cross_origin")
        assert httpx.get(f"{s.url}/v1/people").status_code == 200  # no Origin: curl, a script
        port = s.url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):  # the page's own requests
            r = httpx.get(f"{s.url}/v1/people", headers={"Host": host, "Origin": f"http://{host}"})
            assert r.status_code == 200, r.text


# --- real photos -----------------------------------------------------------------------


def test_enrol_and_identify_lfw_people(client, lfw_dir, server):
    people = ["Aaron_Peirsol", "Colin_Powell", "Serena_Williams"]
    ids = {}
    for name in people:
        photos = [("photos", (p.name, p.read_bytes(), "image/jpeg"))
                  for p in sorted((lfw_dir / name).glob("*.jpg"))[:2]]
        r = client.post("/v1/people", data={"name": name}, files=photos)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["person"]["name"] == name and body["person"]["faces"] == 2 and len(body["face_ids"]) == 2
        ids[name] = body["person"]["id"]
    _error(client.post("/v1/people", data={"name": people[0]}, files=photos), 409, "person_exists")
    listed = client.get("/v1/people").json()
    assert {p["name"] for p in listed["people"]} >= set(people)

    for name in people:  # a third, unenrolled photo of each
        probe = sorted((lfw_dir / name).glob("*.jpg"))[2]
        r = client.post("/v1/identify", files={"photo": (probe.name, probe.read_bytes(), "image/jpeg")},
                        data={"top_k": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["identity"] == name and body["person_id"] == ids[name], body
        assert body["score"] >= body["threshold"] and len(body["matches"]) == 3
        assert body["gallery_faces"] >= 6

    faces = client.get(f"/v1/people/{ids['Colin_Powell']}/faces").json()["faces"]
    assert len(faces) == 2 and all(len(f["crop_sha256"]) == 64 for f in faces)
    a, b = sorted((lfw_dir / "Colin_Powell").glob("*.jpg"))[:2]
    v = client.post("/v1/verify", files={"photo_a": (a.name, a.read_bytes(), "image/jpeg"),
                                         "photo_b": (b.name, b.read_bytes(), "image/jpeg")}).json()
    assert v["same"] is True and v["similarity"] >= v["threshold"]
    emb = client.post("/v1/embed", files={"photo": (a.name, a.read_bytes(), "image/jpeg")}).json()
    assert emb["dim"] == 512 and abs(np.linalg.norm(emb["embedding"]) - 1) < 1e-4

    gone = client.delete(f"/v1/people/{ids['Serena_Williams']}").json()
    assert gone == {"person_id": ids["Serena_Williams"], "faces_removed": 2}
    probe = sorted((lfw_dir / "Serena_Williams").glob("*.jpg"))[2]
    r = client.post("/v1/identify", files={"photo": (probe.name, probe.read_bytes(), "image/jpeg")}).json()
    assert r["identity"] != "Serena_Williams"
    db = sqlite3.connect(server.log.parent / "g.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


@pytest.mark.slow
def test_kill9_during_http_enrolment_loses_nothing(lfw_dir, tmp_path):
    """eval/serve_kill9.py with 3 kills (docs/serving.md has the 20-kill run)."""
    r = subprocess.run(
        [sys.executable, str(REPO / "eval" / "serve_kill9.py"), "--kills", "3", "--lfw", str(lfw_dir),
         "--json", str(tmp_path / "kill9.json")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "FACEKD_WEIGHTS": str(weights_dir())},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "kill9.json").read_text())
    assert report["kills"] == 3 and report["problems"] == 0 and report["enrolments_answered"] > 0
