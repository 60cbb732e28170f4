"""The HTTP contract: a pydantic model for every response body (requests are multipart
forms, declared on the routes), and the one error shape every 4xx and 5xx has."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. no_face, invalid_api_key")
    message: str = Field(description="what was wrong, naming the upload or field")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class FaceInfo(BaseModel):
    """The face used from one uploaded photo."""

    photo: str = Field(description="the form field and file name of the upload")
    faces: int = Field(description="faces detected; the most central one is used")
    score: float = Field(description="the detector's score of the face used")
    detector: str = Field(description="the detector that found it (yunet, mtcnn)")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embedding: list[float] = Field(description="L2-normalised: cosine similarity is the dot product")
    face: FaceInfo


class VerifyResponse(BaseModel):
    model: str
    similarity: float = Field(description="cosine similarity of the two faces")
    threshold: float = Field(description="the model's stored verify threshold")
    same: bool = Field(description="similarity >= threshold")
    faces: list[FaceInfo]


class MatchOut(BaseModel):
    person_id: int
    name: str
    score: float = Field(description="cosine similarity of the probe to the person")
    face_id: int | None = Field(None, description="the face that scored (scoring 'best')")


class IdentifyResponse(BaseModel):
    model: str
    identity: str | None = Field(description="the person's name, or null for unknown")
    person_id: int | None
    score: float = Field(description="the top match's score (-1 for an empty gallery)")
    threshold: float | None = Field(description="the open-set cut; below it the answer is unknown")
    scoring: str = Field(description="'best' (a person's best face) or 'mean' (their mean template)")
    matches: list[MatchOut] = Field(description="the top-k people, best first")
    face: FaceInfo
    gallery_faces: int = Field(description="faces in the gallery when this probe was searched")


class PersonOut(BaseModel):
    id: int
    name: str
    faces: int
    created: str


class PeopleResponse(BaseModel):
    people: list[PersonOut]
    total: int = Field(description="people in the gallery")


class FaceOut(BaseModel):
    id: int
    person_id: int
    source: str = Field(description="the upload the face came from")
    detector: str
    crop_sha256: str = Field(description="SHA-256 of the aligned crop's pixels")
    created: str


class FacesResponse(BaseModel):
    person: PersonOut
    faces: list[FaceOut]


class EnrolResponse(BaseModel):
    person: PersonOut = Field(description="the person, with the face count after enrolment")
    face_ids: list[int]
    faces: list[FaceOut]


class DeletedResponse(BaseModel):
    person_id: int
    faces_removed: int


class HealthResponse(BaseModel):
    status: str
    model: str
    embedding_dim: int
    api_key_required: bool
