"""The gallery (facekd.identify): store, indexes, open-set search, model check, and the
LFW 1:N protocol's arithmetic, on hand-made embeddings whose answers are known."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from facekd.errors import FacekdError
from facekd.identify.evaluation import evaluate_identification, open_set_rates, person_scores, split_trial
from facekd.identify.gallery import Gallery
from facekd.identify.index import INDEXES, build_index
from facekd.identify.records import FaceRecord, GalleryModel, ModelMismatch, NotInGallery
from facekd.identify.store import GalleryStore, SqliteStore

DIM = 8
SHA = "ab" * 32


def _model(**thresholds) -> GalleryModel:
    return GalleryModel(name="m.onnx", sha256=SHA, preprocessing={"template": "112x96"}, embedding_dim=DIM,
                        thresholds={f"identify.{k}": v for k, v in thresholds.items()})


def _e(*weights: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for i, w in weights:
        v[i] = w
    return v


@pytest.fixture
def gallery(tmp_path, request) -> Gallery:
    """Four people on orthogonal axes 0..3; Bea has two faces (axes 1 and 4)."""
    index = getattr(request, "param", "exact")
    g = Gallery(SqliteStore.create(tmp_path / "g.db", _model(best=0.5, mean=0.5)), index=index)
    g.enroll_embeddings("Ada", _e((0, 1.0)))
    g.enroll_embeddings("Bea", np.stack([_e((1, 1.0)), _e((4, 1.0))]))
    g.enroll_embeddings("Cy", _e((2, 1.0)))
    g.enroll_embeddings("Dee", _e((3, 1.0)))
    yield g
    g.close()


def test_store_keeps_what_it_is_given(tmp_path):
    """The SQLite store under the GalleryStore contract: embeddings come back bit for bit,
    in enrolment order, with their people; a reopened file holds the same."""
    rng = np.random.default_rng(0)
    s = SqliteStore.create(tmp_path / "g.db", _model())
    assert isinstance(s, GalleryStore)
    emb = rng.standard_normal((3, DIM)).astype(np.float32)
    ada, ids = s.enroll("Ada", [FaceRecord(source=f"a{i}.jpg") for i in range(2)], emb[:2].copy())
    bea, ids_b = s.enroll("Bea", [FaceRecord(source="b.jpg")], emb[2:].copy())
    s.close()
    s = SqliteStore.open(tmp_path / "g.db")
    face_ids, person_ids, matrix = s.all_embeddings()
    assert face_ids.tolist() == ids + ids_b and person_ids.tolist() == [ada.id, ada.id, bea.id]
    np.testing.assert_array_equal(matrix, emb)
    assert [(p.name, p.faces) for p in s.people()] == [("Ada", 2), ("Bea", 1)]


@pytest.mark.parametrize("gallery", ["exact", "numpy", "hnsw"], indirect=True)
def test_top_k_order_is_the_cosine_order(gallery):
    # cosines: Cy 0.8, Ada 0.6 (normalised probe 0.6 e0 + 0.8 e2), Bea 0, Dee 0
    r = gallery.identify(_e((0, 3.0), (2, 4.0)), top_k=3)
    assert [m.name for m in r.matches[:2]] == ["Cy", "Ada"]
    assert [m.score for m in r.matches[:2]] == pytest.approx([0.8, 0.6], abs=1e-6)
    assert r.name == "Cy" and r.threshold == 0.5
    assert len(r.matches) == 3 and r.matches[2].score == pytest.approx(0.0, abs=1e-6)


def test_unknown_below_threshold(gallery):
    r = gallery.identify(_e((0, 0.4), (5, 0.9165)))  # cos to Ada = 0.4 < 0.5
    assert r.identity is None and r.name is None
    assert r.score == pytest.approx(0.4, abs=1e-3) and r.matches[0].name == "Ada"
    assert gallery.identify(_e((0, 0.4), (5, 0.9165)), threshold=0.3).name == "Ada"


def test_best_face_against_mean_template(gallery):
    probe = _e((1, 1.0))  # one of Bea's two orthogonal faces
    best = gallery.identify(probe, top_k=1, scoring="best")
    mean = gallery.identify(probe, top_k=1, scoring="mean")
    assert best.score == pytest.approx(1.0) and best.matches[0].face_id is not None
    assert mean.score == pytest.approx(1 / np.sqrt(2), abs=1e-6) and mean.matches[0].face_id is None
    assert best.name == mean.name == "Bea"


def test_model_mismatch_is_refused(gallery):
    with pytest.raises(ModelMismatch, match="cannot be searched"):
        gallery.identify(_e((0, 1.0)), model="cd" * 32)
    with pytest.raises(ModelMismatch):
        gallery.identify(np.ones(DIM + 1, dtype=np.float32))
    with pytest.raises(ModelMismatch):
        gallery.enroll_embeddings("Eve", np.ones((1, 4), dtype=np.float32))
    assert gallery.identify(_e((0, 1.0)), model=SHA).name == "Ada"  # the right model passes


def test_remove_and_reopen(gallery, tmp_path):
    bea = gallery.person_by_name("Bea")
    removed = gallery.remove_person(bea.id)
    assert len(removed) == 2
    assert "Bea" not in [m.name for m in gallery.identify(_e((1, 1.0)), top_k=10).matches]
    with pytest.raises(NotInGallery):
        gallery.remove_person(bea.id)
    # enrolling an existing name adds faces to that person
    r = gallery.enroll_embeddings("Ada", _e((5, 1.0)))
    assert r.person.faces == 2
    gallery.close()
    again = Gallery.open(tmp_path / "g.db")
    assert sorted(p.name for p in again.people()) == ["Ada", "Cy", "Dee"]
    assert len(again) == 4
    assert again.identify(_e((5, 1.0))).name == "Ada"


def test_failed_enrolment_stores_nothing(tmp_path):
    s = SqliteStore.create(tmp_path / "g.db", _model())
    pid = s.add_person("Ada")
    faces = [FaceRecord(source="a"), FaceRecord(source="b"), FaceRecord(source="c", detector=object())]
    with pytest.raises(sqlite3.Error):  # the third row cannot be written: the first two are rolled back
        s.add_faces(pid, faces, np.eye(DIM, dtype=np.float32)[:3])
    assert s.faces() == [] and s.face_count() == 0
    with pytest.raises(FacekdError, match="2 faces but 3"):
        s.add_faces(pid, faces[:2], np.eye(DIM, dtype=np.float32)[:3])
    with pytest.raises(FacekdError, match="NaN"):
        s.add_faces(pid, faces[:1], np.full((1, DIM), np.nan, dtype=np.float32))
    assert s.integrity_check() == []


def test_not_a_gallery(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_text("hello")
    with pytest.raises(FacekdError, match="not a facekd gallery"):
        SqliteStore.open(bad)
    with pytest.raises(FacekdError, match="no such gallery"):
        SqliteStore.open(tmp_path / "missing.db")


def test_hnsw_recall_against_exact():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:500] + 0.3 * rng.standard_normal((500, 64)).astype(np.float32) / 8
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.arange(5000) + 100
    exact = build_index("exact", 64, ids, x)
    hnsw = build_index("hnsw", 64, ids, x)
    _, e = exact.search(q, 1)
    _, h = hnsw.search(q, 1)
    assert np.mean(e[:, 0] == h[:, 0]) >= 0.95
    # tombstones: removed ids never come back, and k live ids are still returned
    gone = e[:50, 0]
    hnsw.remove(gone)
    _, h2 = hnsw.search(q[:50], 5)
    assert not np.isin(h2, gone).any() and (h2 >= 0).all()
    assert len(hnsw) == 5000 - 50


@pytest.mark.parametrize("kind", INDEXES.names())
def test_indexes_agree_on_a_small_set(kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = build_index(kind, DIM, np.arange(50), x)
    s, i = idx.search(x[:5], 3)
    assert (i[:, 0] == np.arange(5)).all() and s[:, 0] == pytest.approx(1.0, abs=1e-5)
    s, i = idx.search(x[:1], 60)  # more than stored: padded
    assert (i[0, 50:] == -1).all() and np.isneginf(s[0, 50:]).all()


# --- the 1:N protocol --------------------------------------------------------------


def test_open_set_rates_by_hand():
    mated = np.array([[0.9, 0.5, 0.1], [0.4, 0.6, 0.2], [0.7, 0.8, 0.75], [0.3, 0.2, 0.35]], dtype=np.float32)
    own = np.array([0, 1, 0, 2])  # ranks 1, 1, 3, 1
    non_mated_top = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8], dtype=np.float32)
    rank1, cmc, thr, dirs = open_set_rates(mated, own, non_mated_top, fpirs=(0.1, 0.5), ranks=3)
    assert rank1 == 0.75 and cmc == [0.75, 0.75, 1.0]
    # FPIR 0.1: 1 of 10 non-mated probes may pass -> t just above 0.7 (only 0.8 passes)
    assert 0.7 < thr[0.1] <= 0.7 + 1e-6
    assert np.mean(non_mated_top >= thr[0.1]) == pytest.approx(0.1)
    assert dirs[0.1] == 0.25  # only the 0.9 probe is rank 1 and above 0.7
    assert 0.5 < thr[0.5] <= 0.5 + 1e-6 and dirs[0.5] == 0.5  # 0.9 and 0.6


def test_person_scores_best_and_mean():
    g = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)  # person 5: two faces, person 7: one
    p = np.array([[0.6, 0.8]], dtype=np.float32)
    best = person_scores(p, g, np.array([5, 5, 7]), np.array([5, 7]), "best")
    mean = person_scores(p, g, np.array([5, 5, 7]), np.array([5, 7]), "mean")
    assert best[0] == pytest.approx([0.8, 0.6])
    assert mean[0] == pytest.approx([(0.6 + 0.8) / np.sqrt(2), 0.6])


def test_split_follows_the_protocol():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 5])  # 4 and 5: single-photo people
    sp = split_trial(labels, seed=3, enrolled=3)
    assert len(sp.people) == 2  # half of the 4 identities with >= 2 photos
    assert not set(sp.people) & {4, 5}
    every = np.concatenate([sp.gallery, sp.mated, sp.non_mated])
    assert sorted(every.tolist()) == list(range(len(labels)))  # each photo used exactly once
    assert set(labels[sp.non_mated]) == set(range(6)) - set(sp.people.tolist())
    for p in sp.people:  # at most all but one photo enrolled
        n = int((labels == p).sum())
        assert (sp.gallery_person == p).sum() == min(3, n - 1)
    assert (split_trial(labels, seed=3, enrolled=3).gallery == sp.gallery).all()  # seeded


def test_rank1_on_a_tiny_protocol_equals_a_hand_count():
    """Identities on their own axes, except that person 1's second photo is (e1 + 2 e0)/sqrt(5):
    as a probe it scores 0.89 against person 0 and 0.45 against person 1, so it is ranked
    wrong exactly when both are in the gallery and it is the mated probe; enrolled, it
    still loses to person 0's own face for person 0's probe (0.89 < 1). Every other
    mated probe is right."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 2)
    emb = np.eye(12, dtype=np.float32)[labels] + 0.01 * rng.standard_normal((12, 12)).astype(np.float32)
    emb[3] = (np.eye(12, dtype=np.float32)[1] + 2 * np.eye(12, dtype=np.float32)[0]) / np.sqrt(5)
    res = evaluate_identification(emb, labels, trials=10, enrolled=1)
    wrongs = []
    for t in res.trials:
        sp = split_trial(labels, t.seed, 1)
        wrong = int(0 in sp.people and 1 in sp.people and 3 in sp.mated)
        assert t.rank1 == pytest.approx((len(sp.mated) - wrong) / len(sp.mated))
        wrongs.append(wrong)
    assert 0 < sum(wrongs) < len(wrongs)  # both cases occur among the 10 seeds
    assert res.rank1_mean == pytest.approx(100 * np.mean([t.rank1 for t in res.trials]), abs=1e-3)


def test_two_galleries_on_one_file_stay_in_step(gallery, tmp_path):
    """What a second process does: refresh() rebuilds from the store; apply_added /
    apply_removed update the index incrementally (the PostgreSQL NOTIFY path)."""
    other = Gallery.open(tmp_path / "g.db", index="hnsw")
    r = gallery.enroll_embeddings("Eve", _e((6, 1.0)))
    assert other.identify(_e((6, 1.0))).name is None  # not seen yet: below the 0.5 threshold
    other.apply_added(r.face_ids, [r.person.id], _e((6, 2.0))[None, :])  # normalised on the way in
    assert other.identify(_e((6, 1.0))).name == "Eve"
    other.apply_added(r.face_ids, [r.person.id], _e((6, 1.0))[None, :])  # a repeated notice is ignored
    assert len(other) == len(gallery) == 6
    gallery.remove_person(r.person.id)
    other.apply_removed(r.face_ids, [r.person.id])
    assert other.identify(_e((6, 1.0))).name is None
    cy = gallery.person_by_name("Cy")
    gallery.remove_person(cy.id)
    other.refresh()
    assert "Cy" not in [m.name for m in other.identify(_e((2, 1.0)), top_k=10).matches]
    other.close()


def test_threshold_falls_back_to_verify(tmp_path):
    m = GalleryModel(name="m.onnx", sha256=SHA, preprocessing={}, embedding_dim=DIM, thresholds={"verify": 0.7})
    g = Gallery(SqliteStore.create(tmp_path / "g.db", m))
    g.enroll_embeddings("Ada", _e((0, 1.0)))
    assert g.threshold("best") == 0.7
    assert g.identify(_e((0, 0.6), (1, 0.8))).name is None  # 0.6 < 0.7
    bare = Gallery(SqliteStore.create(tmp_path / "h.db", _model()))
    bare.enroll_embeddings("Ada", _e((0, 1.0)))
    r = bare.identify(_e((0, 0.1), (1, 0.995)))
    assert r.threshold is None and r.name == "Ada"  # no threshold at all: the top match


def test_a_refresh_keeps_an_enrolment_committed_while_it_reads(tmp_path):
    """The PostgreSQL listener refreshes after a reconnect while this process may enrol:
    the refresh's snapshot must not replace an index holding a newer enrolment."""
    g = Gallery(SqliteStore.create(tmp_path / "g.db", _model()))
    snapshot = g.store.all_embeddings
    read, release = threading.Event(), threading.Event()

    def slow_snapshot():  # a large gallery's read, with an enrolment arriving meanwhile
        out = snapshot()
        read.set()
        release.wait(5)
        return out

    g.store.all_embeddings = slow_snapshot
    refresher = threading.Thread(target=g.refresh)
    refresher.start()
    assert read.wait(5)
    enrol = threading.Thread(target=g.enroll_embeddings, args=("Ada", _e((0, 1.0))))
    enrol.start()
    enrol.join(0.5)  # unguarded, it commits and updates the index that the refresh then replaces
    release.set()
    refresher.join(5)
    enrol.join(5)
    g.store.all_embeddings = snapshot
    try:
        assert not refresher.is_alive() and not enrol.is_alive()
        assert len(g) == 1 and g.identify(_e((0, 1.0))).name == "Ada"
    finally:
        g.close()


def test_create_is_all_or_nothing(tmp_path):
    path = tmp_path / "g.db"
    SqliteStore.create(path, _model()).close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("g.db")) == []  # no temporary left
    with pytest.raises(FacekdError, match="already exists"):
        SqliteStore.create(path, _model())
    with SqliteStore.open(path) as s:  # the loser did not touch it
        assert s.model() == _model() and s.integrity_check() == []
