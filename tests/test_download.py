"""Fetching LFW on a fresh machine, against a small archive served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

from facekd.data.fetch import LfwSource, ensure_lfw
from facekd.download import DownloadFailed, RemoteFile, download, safe_extract
from facekd.errors import FacekdError

PAIRS = "2\t1\nAl\t1\t2\nAl\t1\tBo\t1\nAl\t2\t2\nAl\t2\tBo\t1\n"


@pytest.fixture()
def server(tmp_path):
    """A local HTTP server over tmp_path/www, stopped after the test."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source(www: Path, url: str, archive: bytes, archive_sha: str | None = None) -> LfwSource:
    (www / "lfw.tgz").write_bytes(archive)
    (www / "pairs.txt").write_text(PAIRS)
    return LfwSource(
        archive=RemoteFile(f"{url}/lfw.tgz", archive_sha or _sha(archive), "lfw.tgz"),
        top_folder="lfw_funneled",
        pairs=RemoteFile(f"{url}/pairs.txt", _sha(PAIRS.encode()), "pairs.txt"),
    )


def test_fetches_verifies_and_extracts(server, tmp_path):
    www, url = server
    archive = _tgz({"lfw_funneled/Al/Al_0001.jpg": b"a1", "lfw_funneled/Al/Al_0002.jpg": b"a2",
                    "lfw_funneled/Bo/Bo_0001.jpg": b"b1"})
    root = tmp_path / "data"
    seen = []
    lfw = ensure_lfw(root, _source(www, url, archive), progress=lambda d, t: seen.append((d, t)))
    assert lfw == root / "lfw"
    assert (lfw / "Al" / "Al_0002.jpg").read_bytes() == b"a2"
    assert (lfw / "pairs.txt").read_text() == PAIRS
    assert seen and seen[-1][0] == len(archive)
    # A second call finds it and downloads nothing (the server could be gone).
    (www / "lfw.tgz").unlink()
    assert ensure_lfw(root, _source(www, url, b"other")) == lfw


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    www, url = server
    archive = _tgz({"lfw_funneled/Al/Al_0001.jpg": b"a1"})
    root = tmp_path / "data"
    with pytest.raises(FacekdError, match="checksum mismatch"):
        ensure_lfw(root, _source(www, url, archive, archive_sha="0" * 64))
    leftovers = [p for p in (root / "downloads").iterdir()]
    assert leftovers == []
    assert not (root / "lfw").exists()


def test_unreachable_url_is_a_clear_error(tmp_path):
    remote = RemoteFile("http://127.0.0.1:9/none.tgz", "0" * 64, "none.tgz")
    with pytest.raises(FacekdError, match="127.0.0.1:9/none.tgz: download failed"):
        download(remote, tmp_path)


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "lfw_funneled/../../evil.txt"])
def test_path_traversal_is_refused(tmp_path, name):
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(_tgz({"lfw_funneled/ok.txt": b"ok", name: b"evil"}))
    dest = tmp_path / "out" / "x"
    with pytest.raises(FacekdError, match="points outside the extraction folder"):
        safe_extract(bad, dest)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not dest.exists()  # checked before anything was written


def test_links_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("lfw_funneled/passwd")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    bad = tmp_path / "link.tgz"
    bad.write_bytes(buf.getvalue())
    with pytest.raises(FacekdError, match="links are not allowed"):
        safe_extract(bad, tmp_path / "out")


def test_no_download_when_forbidden(tmp_path):
    with pytest.raises(FacekdError, match="LFW not found"):
        ensure_lfw(tmp_path, allow_download=False)


def test_weights_that_cannot_be_downloaded_say_how_to_supply_them(monkeypatch):
    """A manifest entry that cannot be fetched (no internet) names the file to place and
    $FACEKD_WEIGHTS, what a machine without internet needs."""
    import facekd.weights as weights

    name = next(n for n, e in weights.manifest().items() if "url" in e and "shipped" not in e and "source" not in e)
    filename = weights.manifest()[name]["filename"]
    monkeypatch.delenv("FACEKD_WEIGHTS", raising=False)

    def offline(remote, dest):
        raise DownloadFailed(f"{remote.url}: download failed (Name or service not known)")

    monkeypatch.setattr(weights, "download", offline)
    with pytest.raises(FacekdError) as err:
        weights.resolve_weights(name)
    assert "download failed" in str(err.value) and f"put {filename} in a folder and set FACEKD_WEIGHTS" in str(err.value)

    def corrupt(remote, dest):  # a file that arrived but is not the one the manifest names: no internet advice
        raise FacekdError(f"{remote.url}: checksum mismatch")

    monkeypatch.setattr(weights, "download", corrupt)
    with pytest.raises(FacekdError, match="checksum mismatch$"):
        weights.resolve_weights(name)
