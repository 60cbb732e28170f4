"""The PostgreSQL gallery store: the GalleryStore contract, and two galleries (two
processes' worth of state) on one database kept in step through LISTEN/NOTIFY.

A throwaway server is started in a temporary directory (tests/pg_server.py); without
Debian's postgresql package these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from facekd.cli import main
from facekd.errors import FacekdError
from facekd.identify.gallery import Gallery
from facekd.identify.location import is_postgres_url
from facekd.identify.records import FaceRecord, GalleryModel, ModelMismatch, NotInGallery
from facekd.identify.store import GalleryStore

psycopg = pytest.importorskip("psycopg", reason="psycopg (PyPI psycopg[binary]) is not installed")

from facekd.identify.postgres import PostgresStore  # noqa: E402  (needs psycopg)
from pg_server import find_pg_bin, start_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DIM = 8
MODEL = GalleryModel(name="toy.onnx", sha256="ab" * 32, preprocessing={"input_size": [112, 112]}, embedding_dim=DIM,
                     thresholds={"verify": 0.3, "identify.best": 0.5})


@pytest.fixture(scope="module")
def pg():
    bin_dir, why = find_pg_bin()
    if bin_dir is None:
        pytest.skip(why)
    server = start_server(bin_dir)
    yield server
    server.stop()


@pytest.fixture
def url(pg):
    """An empty database for each test."""
    name = f"g{time.monotonic_ns()}"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _wait(cond, timeout: float = 5.0, poll: float = 0.005) -> float:
    """Seconds until cond() held; fails after ``timeout``."""
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(poll)
    return time.perf_counter() - t0


def _follower(url: str) -> Gallery:
    """Another process's gallery on ``url``: listening before its snapshot, then following."""
    store = PostgresStore.open(url)
    store.listen()
    gallery = Gallery(store)
    store.follow(gallery)
    return gallery


def test_url_selects_postgres():
    assert is_postgres_url("postgresql://u@h:5432/db") and is_postgres_url("postgres://h/db")
    assert not is_postgres_url("people.db") and not is_postgres_url("/tmp/postgresql/g.db")


def test_store_contract(url):
    rng = np.random.default_rng(0)
    store = PostgresStore.create(url, MODEL)
    assert isinstance(store, GalleryStore)
    assert store.model() == MODEL
    with pytest.raises(FacekdError, match="already holds"):
        PostgresStore.create(url, MODEL)
    emb = _unit(rng, 3)
    person, ids = store.enroll("Ada", [FaceRecord(source=f"a{i}.jpg", detector="yunet", crop_sha256="00") for i in range(3)], emb)
    assert person.name == "Ada" and person.faces == 3 and ids == sorted(ids)
    # The same name again adds to the same person, in one transaction.
    person2, ids2 = store.enroll("Ada", [FaceRecord(source="a3.jpg")], _unit(rng, 1))
    assert person2.id == person.id and person2.faces == 4
    bob = store.add_person("Bob")
    with pytest.raises(FacekdError, match="already enrolled"):
        store.add_person("Bob")
    with pytest.raises(ModelMismatch):
        store.add_faces(bob, [FaceRecord(source="b.jpg")], np.ones((1, DIM + 1), np.float32))
    with pytest.raises(NotInGallery):
        store.add_faces(999, [FaceRecord(source="b.jpg")], _unit(rng, 1))
    assert store.faces(bob) == []
    assert [p.name for p in store.people()] == ["Ada", "Bob"]
    face_ids, person_ids, matrix = store.all_embeddings()
    assert face_ids.tolist() == ids + ids2 and set(person_ids.tolist()) == {person.id}
    np.testing.assert_allclose(matrix[:3], emb, rtol=0, atol=0)  # real[] holds float32 exactly
    assert store.remove_face(ids[0]) == person.id
    with pytest.raises(NotInGallery):
        store.remove_face(ids[0])
    assert store.remove_person(person.id) == ids[1:] + ids2
    with pytest.raises(NotInGallery):
        store.person(person.id)
    assert store.face_count() == 0
    store.close()
    reopened = PostgresStore.open(url)
    assert reopened.model() == MODEL and [p.name for p in reopened.people()] == ["Bob"]
    reopened.close()


def test_wrong_length_embedding_refused_by_the_table(url):
    store = PostgresStore.create(url, MODEL)
    pid = store.add_person("Eve")
    insert = "INSERT INTO faces (person_id, source, detector, crop_sha256, embedding) VALUES (%s, 'x', '', '', %s::real[])"
    with psycopg.connect(url, autocommit=True) as conn:  # past the store's own check, straight to the table
        for bad in ([0.0] * (DIM - 1), [[0.0] * DIM]):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(insert, (pid, bad))
        conn.execute(insert, (pid, [0.0] * DIM))
    assert store.face_count() == 1
    store.close()


def test_two_galleries_stay_in_step(url):
    """What two `facekd serve` processes do, in one process: each gallery has its own
    store (connections) and index; an enrolment or removal through one reaches the other."""
    rng = np.random.default_rng(1)
    a = Gallery(PostgresStore.create(url, MODEL))
    a.store.follow(a)
    b = _follower(url)
    try:
        ada = _unit(rng, 2)
        a.enroll_embeddings("Ada", ada)
        _wait(lambda: len(b) == 2)
        assert b.identify(ada[0], top_k=1).name == "Ada"
        # From A's commit returning to B's index holding the face, 20 times.
        delays = []
        for i in range(20):
            a.enroll_embeddings(f"P{i}", _unit(rng, 1))
            delays.append(_wait(lambda: len(b) == 3 + i, poll=0.0002))
        print(f"\nsync delay, enrolment through one gallery -> the other's index (20 enrolments, polled every "
              f"0.2 ms): median {np.median(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms")
        assert max(delays) < 1.0
        for i in range(20):
            a.remove_person(a.person_by_name(f"P{i}").id)
        _wait(lambda: len(b) == 2)
        # The other way, and a person new to the receiving side.
        bob = _unit(rng, 1)
        enrol = b.enroll_embeddings("Bob", bob)
        _wait(lambda: len(a) == 3)
        assert a.identify(bob[0]).name == "Bob"
        a.remove_person(enrol.person.id)
        _wait(lambda: len(b) == 2)
        assert [m.name for m in b.identify(bob[0], top_k=5).matches] == ["Ada"]
        face = a.faces()[0].id
        b.remove_face(face)
        _wait(lambda: len(a) == 1)
    finally:
        a.close()
        b.close()


def test_changes_made_while_a_gallery_opens_are_not_lost(url):
    """An enrolment committed between a store's open and its listener's start is caught up."""
    rng = np.random.default_rng(2)
    writer = PostgresStore.create(url, MODEL)
    late = PostgresStore.open(url)
    g = Gallery(late)  # snapshot: empty
    writer.enroll("Cy", [FaceRecord(source="c.jpg")], _unit(rng, 1))  # no one listens yet
    late.follow(g)  # listens, then rebuilds once
    try:
        assert len(g) == 1
        writer.enroll("Di", [FaceRecord(source="d.jpg")], _unit(rng, 1))
        _wait(lambda: len(g) == 2)
    finally:
        g.close()
        writer.close()


def test_many_faces_in_one_enrolment_notify_in_chunks(url):
    rng = np.random.default_rng(3)
    a = Gallery(PostgresStore.create(url, MODEL))
    b = _follower(url)
    try:
        a.enroll_embeddings("Many", _unit(rng, 1234))  # three notifications of <= 500 ids
        _wait(lambda: len(b) == 1234)
    finally:
        a.close()
        b.close()


def test_a_removal_while_the_listener_applies_an_add_leaves_no_phantom(url):
    """B's listener has read a face A enrolled; B removes the person before the listener
    applies the read (B's own removal notification is skipped): the face must not stay."""
    rng = np.random.default_rng(5)
    a = Gallery(PostgresStore.create(url, MODEL))
    b_store = PostgresStore.open(url)
    b_store.listen()
    b = Gallery(b_store)
    read, release = threading.Event(), threading.Event()
    reader = b_store.embeddings

    def slow_read(face_ids):  # the listener's read of the added faces, held once
        out = reader(face_ids)
        if not read.is_set():
            read.set()
            release.wait(5)
        return out

    b_store.embeddings = slow_read
    b_store.follow(b)
    try:
        pid = a.enroll_embeddings("Gone", _unit(rng, 1)).person.id
        assert read.wait(5)
        remover = threading.Thread(target=b.remove_person, args=(pid,))
        remover.start()
        remover.join(0.5)
        release.set()
        remover.join(5)
        time.sleep(0.2)  # the listener applies what it read
        _wait(lambda: len(b) == 0, timeout=2)
        assert b.identify(_unit(rng, 1)[0]).matches == []
    finally:
        release.set()
        a.close()
        b.close()


def test_junk_notifications_and_a_failing_rebuild_do_not_stop_the_listener(url):
    """Anyone with access to the database can NOTIFY the channel; a rebuild can fail. The
    listener logs, rebuilds or retries, and keeps following."""
    rng = np.random.default_rng(6)
    a = Gallery(PostgresStore.create(url, MODEL))
    b = _follower(url)
    rebuild = b.refresh
    failures = []

    def failing_once():  # the first rebuild after the connection drops fails
        if not failures:
            failures.append(1)
            raise RuntimeError("rebuild failed")
        rebuild()

    try:
        with psycopg.connect(url, autocommit=True) as c:
            for junk in ("junk", "[1]", '{"op": "add", "faces": [99999999999999999999]}', '{"op": "remove", "faces": "x"}'):
                c.execute("SELECT pg_notify('facekd_gallery', %s)", (junk,))
            a.enroll_embeddings("Ada", _unit(rng, 1))
            _wait(lambda: len(b) == 1)
            b.refresh = failing_once
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'")
        _wait(lambda: failures == [1])
        a.enroll_embeddings("Bo", _unit(rng, 1))
        _wait(lambda: len(b) == 2, timeout=10)
    finally:
        a.close()
        b.close()


def test_a_database_restart_is_survived(pg, url):
    """After PostgreSQL restarts, reads reconnect, the listener listens again and reloads
    the gallery (catching what was committed while it was away), and sync resumes."""
    rng = np.random.default_rng(4)
    a = Gallery(PostgresStore.create(url, MODEL))
    b = _follower(url)
    try:
        a.enroll_embeddings("Before", _unit(rng, 1))
        _wait(lambda: len(b) == 1)
        pg.restart()
        assert [p.name for p in a.people()] == ["Before"]  # a read on a dropped connection: retried
        a.enroll_embeddings("After", _unit(rng, 2))
        _wait(lambda: len(b) == 3, timeout=10)
        a.enroll_embeddings("Later", _unit(rng, 1))
        _wait(lambda: len(b) == 4)
        assert {p.name for p in b.people()} == {"Before", "After", "Later"}
    finally:
        a.close()
        b.close()


def test_gallery_commands_take_a_url(url, lfw_dir, yunet_weights, capsys):
    """`facekd gallery enroll|list|info|remove` and `facekd identify` with a postgresql:// URL."""
    model = REPO / "weights" / "student5_mobilefacenet_casia.onnx"
    photos = sorted((lfw_dir / "Aaron_Peirsol").glob("*.jpg"))
    assert main(["gallery", "enroll", url, *map(str, photos[:2]), "--name", "Aaron_Peirsol", "--model", str(model),
                 "--detector", "yunet"]) == 0
    assert main(["gallery", "list", url]) == 0
    assert "Aaron_Peirsol" in capsys.readouterr().out
    assert main(["identify", url, str(photos[2]), "--detector", "yunet"]) == 0
    assert "Aaron_Peirsol" in capsys.readouterr().out
    assert main(["gallery", "info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["faces"] == 2 and info["bytes"] is None and "password" not in info["gallery"]
    assert main(["gallery", "remove", url, "Aaron_Peirsol"]) == 0
    with PostgresStore.open(url) as s:
        assert s.people() == []


# --- two `facekd serve` processes on one PostgreSQL gallery ----------------------------


def test_two_servers_share_one_gallery(url, lfw_dir, tmp_path):
    """A person enrolled through one server is identified through the other within a
    second (the delay is printed: run with -s to see it); a removal travels back."""
    httpx = pytest.importorskip("httpx")
    from facekd.serve.process import ServerProcess  # needs httpx (the serve extra), checked just above

    weights = Path(os.environ.get("FACEKD_WEIGHTS") or REPO.parent / "shared" / "weights")
    if not (weights / "face_detection_yunet_2023mar.onnx").is_file():
        pytest.skip(f"YuNet model not found in {weights} (set FACEKD_WEIGHTS)")
    env = {"FACEKD_WEIGHTS": str(weights), "FACEKD_CACHE": str(tmp_path / "cache")}
    args = ["--model", str(REPO / "weights" / "student5_mobilefacenet_casia.onnx"), "--gallery", url,
            "--detector", "yunet"]
    # Started together: one creates the gallery, the other finds it created (or loses the race and opens it).
    a = ServerProcess(args, log=tmp_path / "a.log", env=env)
    b = None
    try:
        b = ServerProcess(args, log=tmp_path / "b.log", env=env)
        a.wait_ready()
        b.wait_ready()
        name = "Colin_Powell"
        photos = sorted((lfw_dir / name).glob("*.jpg"))
        probe = {"photo": (photos[3].name, photos[3].read_bytes(), "image/jpeg")}
        with httpx.Client(base_url=a.url, timeout=60) as ca, httpx.Client(base_url=b.url, timeout=60) as cb:
            before = cb.post("/v1/identify", files=probe)
            assert before.status_code == 200 and before.json()["identity"] is None, before.text
            r = ca.post("/v1/people", data={"name": name},
                        files=[("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:3]])
            assert r.status_code == 201, r.text
            enrolled = time.perf_counter()
            while True:
                sent = time.perf_counter() - enrolled
                body = cb.post("/v1/identify", files=probe).json()
                answered = time.perf_counter() - enrolled
                if body["identity"] == name or answered > 5:
                    break
            print(f"\nsync delay: first identify through B naming {name} was sent {sent * 1000:.0f} ms and answered "
                  f"{answered * 1000:.0f} ms after A's enrol response")
            assert body["identity"] == name and -1 <= body["score"] <= 1 and body["gallery_faces"] == 3, body
            assert answered < 1.0
            gone = cb.delete(f"/v1/people/{r.json()['person']['id']}")
            assert gone.status_code == 200 and gone.json()["faces_removed"] == 3
            deadline = time.perf_counter() + 5
            while ca.post("/v1/identify", files=probe).json()["gallery_faces"] != 0:
                assert time.perf_counter() < deadline, "the removal through B did not reach A"
    finally:
        if b is not None:
            b.stop()
        a.stop()
