"""The page at ``/``: enrol a person and identify a photo from a browser.

Plain HTML, CSS and a little JavaScript in ``facekd/serve/static/`` (no build step, no
CDN, nothing fetched from elsewhere: the Content-Security-Policy says so). The page
calls the same ``/v1`` routes as any client, with ``fetch`` and the ``X-API-Key`` the
user types when the server needs one, plus ``POST /v1/align``, added here: the aligned
crop of a photo's face as a PNG, which the page shows beside the matches.

``create_app(settings, page=page_router(settings))`` serves it.
"""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from facekd.serve.app import face_info, upload_name
from facekd.serve.errors import ApiError
from facekd.serve.schemas import FaceInfo
from facekd.serve.security import ApiKeyCheck, read_api_keys
from facekd.serve.settings import ServeSettings

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# Only this server's own files and the crops it returns (data: URLs): no CDN, no inline script.
CSP = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


class AlignResponse(BaseModel):
    """The aligned crop the model embeds, for display."""

    crop_png: str = Field(description="the aligned face crop (the model's template and input size), PNG, base64")
    width: int
    height: int
    face: FaceInfo


def crop_png_base64(crop) -> str:
    """An RGB uint8 crop as base64 PNG."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ApiError(500, "internal_error", "could not encode the aligned crop as PNG")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def page_router(settings: ServeSettings) -> APIRouter:
    """The page, its static files, and ``POST /v1/align`` (behind the API key, like /v1)."""
    keys = read_api_keys(settings.api_key_file) if settings.api_key_file else ()
    auth = ApiKeyCheck(keys)
    files = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES}
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(files["index.html"], media_type=_TYPES[".html"], headers=headers)

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        path = files.get(name)  # only the files listed at start: no path is ever joined
        if path is None:
            raise ApiError(404, "not_found", f"no static file {name!r}")
        return FileResponse(path, media_type=_TYPES[path.suffix], headers=headers)

    @router.post("/v1/align", response_model=AlignResponse, tags=["faces"], dependencies=[Depends(auth)])
    async def align(request: Request, photo: UploadFile = File(description="a photo with a face")) -> AlignResponse:
        """The aligned crop of the photo's most central face (what /v1/identify embeds), as PNG."""
        engine = request.app.state.engine
        face = await engine.run(engine.face, await photo.read(), upload_name("photo", photo))
        png = await engine.run(crop_png_base64, face.crop)
        return AlignResponse(crop_png=png, width=int(face.crop.shape[1]), height=int(face.crop.shape[0]),
                             face=face_info(face))

    return router
