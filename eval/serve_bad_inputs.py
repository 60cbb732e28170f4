"""Every bad input of issue 27 sent to `facekd serve` on 127.0.0.1, with the status and
message each gets, as a Markdown table (docs/serving.md holds its output).

    python eval/serve_bad_inputs.py [--lfw LFW] [--model M.onnx] [--other-model O.onnx]

Two servers: one with an API key file and ``--max-body-mb 2`` on a gallery of ``--model``,
one on a gallery built with ``--other-model`` (for the probe that cannot be compared).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from facekd.identify.gallery import Gallery
from facekd.serve.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent
KEY = "bad-inputs-key-0123456789"


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "weights" / "student5_mobilefacenet_casia.onnx")
    ap.add_argument("--other-model", type=Path, default=REPO / "weights" / "student5_facenet_casia.onnx")
    ap.add_argument("--lfw", type=Path, default=Path(os.environ.get("FACEKD_DATA", REPO.parent / "shared" / "data")) / "lfw")
    args = ap.parse_args()
    face = (args.lfw / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()
    y, x = np.mgrid[0:240, 0:320]
    wall = _jpeg(np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8))
    bomb = io.BytesIO()
    Image.new("1", (8000, 6000)).save(bomb, format="PNG")
    rows: list[tuple[str, httpx.Response]] = []
    with tempfile.TemporaryDirectory(prefix="facekd-serve-bad-") as tmp:
        tmp = Path(tmp)
        (tmp / "keys").write_text(KEY + "\n")
        Gallery.create(tmp / "other.sqlite", args.other_model).close()
        with ServerProcess(["--model", str(args.model), "--gallery", str(tmp / "g.sqlite"), "--api-key-file",
                            str(tmp / "keys"), "--max-body-mb", "2"], log=tmp / "log") as s:
            s.wait_ready()
            key = {"X-API-Key": KEY}
            with httpx.Client(base_url=s.url, timeout=60.0) as c:
                photo = {"photo": ("colin.jpg", face, "image/jpeg")}
                rows.append(("no API key (`POST /v1/embed`)", c.post("/v1/embed", files=photo)))
                rows.append(("a wrong API key", c.post("/v1/embed", files=photo, headers={"X-API-Key": "x" * 24})))
                big = b"\xff\xd8\xff" + os.urandom(3 * 2**20)
                rows.append(("a 3 MiB body (limit `--max-body-mb 2`)",
                             c.post("/v1/embed", files={"photo": ("big.jpg", big, "image/jpeg")}, headers=key)))
                rows.append(("a decompression bomb: 8000x6000 PNG of 6 KB",
                             c.post("/v1/embed", files={"photo": ("bomb.png", bomb.getvalue(), "image/png")}, headers=key)))
                rows.append(("a truncated JPEG (first half of an LFW photo)",
                             c.post("/v1/embed", files={"photo": ("cut.jpg", face[: len(face) // 2], "image/jpeg")},
                                    headers=key)))
                rows.append(("a text file named .jpg",
                             c.post("/v1/embed", files={"photo": ("face.jpg", b"hello, I am text\n", "image/jpeg")},
                                    headers=key)))
                rows.append(("a GIF image", c.post("/v1/embed", files={"photo": ("a.gif", b"GIF89a" + bytes(64), "image/gif")},
                                                   headers=key)))
                rows.append(("a photo with no face (a colour gradient)",
                             c.post("/v1/identify", files={"photo": ("wall.jpg", wall, "image/jpeg")}, headers=key)))
                rows.append(("an unknown person id (`GET /v1/people/4242/faces`)",
                             c.get("/v1/people/4242/faces", headers=key)))
                rows.append(("no photo field (`POST /v1/identify` without `photo`)",
                             c.post("/v1/identify", data={"top_k": "3"}, headers=key)))
                rows.append(("`top_k=0`", c.post("/v1/identify", data={"top_k": "0"}, files=photo, headers=key)))
                rows.append(("an unknown route", c.get("/v1/faces", headers=key)))
                rows.append(("a wrong method (`PUT /v1/people`)", c.put("/v1/people", headers=key)))
        with ServerProcess(["--model", str(args.model), "--gallery", str(tmp / "other.sqlite")], log=tmp / "log2") as s:
            s.wait_ready()
            rows.append((f"a probe for a gallery built with {args.other_model.name}",
                         httpx.post(f"{s.url}/v1/identify", files={"photo": ("colin.jpg", face, "image/jpeg")},
                                    timeout=60.0)))
    print("| bad input | status | code | message |")
    print("|---|---|---|---|")
    for what, r in rows:
        err = r.json().get("error", {})
        print(f"| {what} | {r.status_code} | `{err.get('code')}` | {err.get('message', r.text).replace('|', '/')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
