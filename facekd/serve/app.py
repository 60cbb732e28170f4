"""The FastAPI application: ``create_app(settings)`` loads the model, the detectors and the
gallery once and returns the app; nothing happens at import.

Routes (all under ``/v1``; multipart uploads only, never a server path or a URL):
``POST /v1/embed``, ``POST /v1/verify``, ``POST /v1/identify``, ``GET/POST /v1/people``,
``DELETE /v1/people/{id}``, ``GET/POST /v1/people/{id}/faces``, ``GET /v1/health``;
the OpenAPI page at ``/docs`` and ``/openapi.json``. With API keys configured, every
route but health, ``/`` and the OpenAPI pages needs ``X-API-Key``.
"""

from __future__ import annotations

import contextlib
import logging
import unicodedata

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Path as PathParam, Query, UploadFile, status
from fastapi.responses import HTMLResponse
from PIL import Image

from facekd.deploy.photos import PhotoFace
from facekd.identify.gallery import Gallery
from facekd.serve.engine import Engine
from facekd.serve.errors import ApiError, install_error_handlers
from facekd.serve.gallery import GalleryService, open_gallery
from facekd.serve.limits import BodyLimit
from facekd.serve.schemas import (
    DeletedResponse,
    EmbedResponse,
    EnrolResponse,
    ErrorResponse,
    FaceInfo,
    FaceOut,
    FacesResponse,
    HealthResponse,
    IdentifyResponse,
    MatchOut,
    PeopleResponse,
    PersonOut,
    VerifyResponse,
)
from facekd.serve.security import ApiKeyCheck, LoopbackOnly, check_binding, read_api_keys
from facekd.serve.settings import ServeSettings

log = logging.getLogger("facekd.serve")

MAX_UPLOADS = 32  # photos in one enrolment request
MAX_TOP_K = 100

# What every route may answer besides its success, for the OpenAPI page.
_ERRORS = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        401: "missing or invalid X-API-Key", 404: "unknown person or route", 409: "gallery built with another model",
        413: "request body over --max-body-mb", 415: "not a JPEG, PNG, WebP or BMP image",
        422: "invalid request, unreadable image, image over the pixel limit, or no face found",
        500: "server error (logged)",
    }.items()
}

PLACEHOLDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facekd serve</title></head>
<body><h1>facekd serve</h1>
<p>Face embedding, verification and identification over HTTP. The API and its schema:
<a href="/docs">/docs</a> (<a href="/openapi.json">openapi.json</a>).</p></body></html>
"""


def face_info(f: PhotoFace) -> FaceInfo:
    return FaceInfo(photo=f.photo, faces=f.faces, score=f.score, detector=f.detector)


def upload_name(field: str, upload: UploadFile) -> str:
    """How an upload is named in messages and stored as a face's source: the form field
    and the client's file name, its control characters (a NUL, a newline) as ``?``."""
    if not upload.filename:
        return field
    filename = "".join("?" if unicodedata.category(c) == "Cc" else c for c in upload.filename)
    return f"{field} ({filename})"


async def _read(field: str, upload: UploadFile) -> tuple[bytes, str]:
    return await upload.read(), upload_name(field, upload)


def _person_name(name: str) -> str:
    """The name without surrounding blanks.

    Raises:
        ApiError: 422 ``invalid_name`` when it is blank or holds a control character (a
            newline or a NUL, which PostgreSQL cannot store), before any image work.
    """
    clean = name.strip()
    if not clean:
        raise ApiError(422, "invalid_name", "name: blank; give the person's name")
    if any(unicodedata.category(c) == "Cc" for c in clean):
        raise ApiError(422, "invalid_name", f"name: {clean!r} holds a control character (newline, tab, NUL)")
    return clean


def create_app(
    settings: ServeSettings,
    *,
    gallery: Gallery | None = None,
    page: APIRouter | None = None,
) -> FastAPI:
    """Builds the server: checks the binding, reads the keys, loads the model and gallery.

    Args:
        settings: What to serve and how.
        gallery: A gallery already opened (any store); default: the one at
            ``settings.gallery`` (a SQLite file or a PostgreSQL URL), created for this
            model when missing.
        page: A router serving the web page at ``/``; default: a placeholder that points
            to ``/docs``.

    Raises:
        FacekdError: A non-loopback host without a key file, an unreadable key file, or a
            model that cannot be loaded.
    """
    check_binding(settings.host, settings.api_key_file)
    keys = read_api_keys(settings.api_key_file) if settings.api_key_file else ()
    # The process-wide decoder limit, for any decode that does not go through images.py.
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    engine = Engine(settings.model, settings.detectors, settings.worker_threads, settings.max_pixels)
    try:
        service = GalleryService(gallery, engine) if gallery is not None else open_gallery(settings.gallery, engine)
    except BaseException:
        engine.close()
        raise
    auth = ApiKeyCheck(keys)

    app = _new_app(settings, engine, service, auth)
    api = APIRouter(prefix="/v1", dependencies=[Depends(auth)])
    _face_routes(api, engine, service)
    _gallery_routes(api, engine, service)
    app.include_router(api)
    if page is not None:
        app.include_router(page)
    else:
        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def index() -> str:
            return PLACEHOLDER_PAGE

    return app


def _new_app(settings: ServeSettings, engine: Engine, service: GalleryService, auth: ApiKeyCheck) -> FastAPI:
    """The application with its lifespan (closing the engine and gallery), error shape,
    limits and the unauthenticated health route."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.close()
        service.close()

    app = FastAPI(
        title="facekd serve",
        version="1",
        description="Face embedding, 1:1 verification and 1:N identification over a persistent gallery.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.engine = engine
    app.state.gallery = service
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if not auth.enabled:  # loopback without keys: no other host, no other page
        app.add_middleware(LoopbackOnly)

    @app.get("/v1/health", response_model=HealthResponse, tags=["server"])
    async def health() -> HealthResponse:
        """Liveness: the model is loaded. Needs no API key."""
        return HealthResponse(status="ok", model=engine.model_name, embedding_dim=engine.embedding_dim,
                              api_key_required=auth.enabled)

    return app


def _face_routes(api: APIRouter, engine: Engine, service: GalleryService) -> None:
    """``/v1/embed``, ``/v1/verify`` and ``/v1/identify`` on ``api``."""

    @api.post("/embed", response_model=EmbedResponse, tags=["faces"])
    async def embed(photo: UploadFile = File(description="a photo with a face (JPEG, PNG, WebP or BMP)")) -> EmbedResponse:
        """Detects and aligns the most central face and returns its embedding."""
        faces, emb = await engine.run(engine.faces_and_embeddings, [await _read("photo", photo)])
        return EmbedResponse(model=engine.model_name, dim=int(emb.shape[1]), embedding=emb[0].tolist(),
                             face=face_info(faces[0]))

    @api.post("/verify", response_model=VerifyResponse, tags=["faces"])
    async def verify(photo_a: UploadFile = File(), photo_b: UploadFile = File()) -> VerifyResponse:
        """Same person or not: cosine similarity against the model's stored threshold."""
        if engine.threshold is None:
            raise ApiError(409, "no_threshold",
                           f"{engine.model_name} has no verify threshold stored (facekd threshold adds one)")
        uploads = [await _read("photo_a", photo_a), await _read("photo_b", photo_b)]
        faces, emb = await engine.run(engine.faces_and_embeddings, uploads)
        sim = float(emb[0] @ emb[1])
        return VerifyResponse(model=engine.model_name, similarity=sim, threshold=engine.threshold,
                              same=sim >= engine.threshold, faces=[face_info(f) for f in faces])

    @api.post("/identify", response_model=IdentifyResponse, tags=["gallery"])
    async def identify(
        photo: UploadFile = File(description="the probe photo"),
        top_k: int = Form(5, ge=1, le=MAX_TOP_K, description="people to return, best first"),
    ) -> IdentifyResponse:
        """Who is this? The gallery's best match, or null (unknown) below the open-set threshold."""
        service.check_model()
        faces, emb = await engine.run(engine.faces_and_embeddings, [await _read("photo", photo)])
        result, searched = await engine.run(service.identify, emb[0], top_k)
        return IdentifyResponse(
            model=engine.model_name, identity=result.name,
            person_id=result.identity.person_id if result.identity else None, score=result.score,
            threshold=result.threshold, scoring=result.scoring,
            matches=[MatchOut(**m.to_dict()) for m in result.matches], face=face_info(faces[0]),
            gallery_faces=searched,
        )


async def _enrol_uploads(engine: Engine, photos: list[UploadFile]) -> tuple[list[PhotoFace], np.ndarray]:
    if len(photos) > MAX_UPLOADS:
        raise ApiError(422, "too_many_photos", f"{len(photos)} photos in one request; at most {MAX_UPLOADS}")
    uploads = [await _read(f"photos[{i}]", p) for i, p in enumerate(photos)]
    return await engine.run(engine.faces_and_embeddings, uploads)


def _gallery_routes(api: APIRouter, engine: Engine, service: GalleryService) -> None:
    """The gallery CRUD routes (``/v1/people``...) on ``api``."""

    @api.get("/people", response_model=PeopleResponse, tags=["gallery"])
    async def list_people(
        limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
    ) -> PeopleResponse:
        """The enrolled people with their face counts, by id."""
        people = await engine.run(service.people)
        return PeopleResponse(people=[PersonOut(**p.to_dict()) for p in people[offset : offset + limit]],
                              total=len(people))

    @api.post("/people", response_model=EnrolResponse, status_code=status.HTTP_201_CREATED, tags=["gallery"])
    async def create_person(
        name: str = Form(min_length=1, max_length=200, description="the person's name (unique in the gallery)"),
        photos: list[UploadFile] = File(description="one or more photos of them, one face each"),
    ) -> EnrolResponse:
        """Enrols a new person with their photos. All or nothing: a photo without a usable
        face fails the request and nothing is stored."""
        service.check_model()
        name = _person_name(name)
        faces, emb = await _enrol_uploads(engine, photos)
        enrolment = await engine.run(service.enroll_new, name, faces, emb)
        return _enrolment(enrolment)

    @api.delete("/people/{person_id}", response_model=DeletedResponse, tags=["gallery"])
    async def delete_person(person_id: int = PathParam(ge=1)) -> DeletedResponse:
        """Removes a person and all their faces."""
        removed = await engine.run(service.remove_person, person_id)
        return DeletedResponse(person_id=person_id, faces_removed=removed)

    @api.get("/people/{person_id}/faces", response_model=FacesResponse, tags=["gallery"])
    async def list_faces(person_id: int = PathParam(ge=1)) -> FacesResponse:
        """A person's enrolled faces."""
        person, faces = await engine.run(service.person_faces, person_id)
        return FacesResponse(person=PersonOut(**person.to_dict()), faces=[FaceOut(**f.to_dict()) for f in faces])

    @api.post("/people/{person_id}/faces", response_model=EnrolResponse, status_code=status.HTTP_201_CREATED,
              tags=["gallery"])
    async def add_faces(
        person_id: int = PathParam(ge=1),
        photos: list[UploadFile] = File(description="one or more photos of the person, one face each"),
    ) -> EnrolResponse:
        """Adds faces to an enrolled person. All or nothing, as for a new person."""
        service.check_model()
        await engine.run(service.person, person_id)  # 404 before any image work
        faces, emb = await _enrol_uploads(engine, photos)
        enrolment = await engine.run(service.add_faces, person_id, faces, emb)
        return _enrolment(enrolment)


def _enrolment(enrolment) -> EnrolResponse:
    return EnrolResponse(person=PersonOut(**enrolment.person.to_dict()), face_ids=list(enrolment.face_ids),
                         faces=[FaceOut(**f.to_dict()) for f in enrolment.faces])

