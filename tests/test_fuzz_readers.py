"""Every reader a user can point at a file, fed generated inputs (issue 30).

Each reader must give a FacekdError naming the file and the reason, or a correct
result: never another exception, a hang, code execution or a write outside its
output folder. Images are the exception to the error type: :func:`read_rgb` raises
``UnreadableImage`` (its reason; the caller names the file, e.g. in the align report).

Bounded in CI (profile ``fuzz-ci``: a few examples per reader, a deadline); the long
run raises the counts::

    FACEKD_FUZZ_PROFILE=fuzz-long FACEKD_FUZZ_EXAMPLES=2000 \\
        FACEKD_FUZZ_COUNTS=/tmp/fuzz_counts.json nice -n 15 .venv/bin/python -m pytest -q tests/test_fuzz_readers.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import struct
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from facekd.align.folder import recorded_fallbacks
from facekd.config import load_config
from facekd.image_io import UnreadableImage, read_rgb
from facekd.data.insightface_bin import read_bin
from facekd.data.lfw import parse_pairs
from facekd.data.pack import Pack, write_pack
from facekd.errors import FacekdError
from facekd.experiments.results import read_results
from facekd.hub import resolve
from facekd.prune.config import PruneConfig
from facekd.train.checkpoint import backbone_state, load_checkpoint, model_checkpoint, save_checkpoint
from facekd.train.config import TrainConfig
from facekd.weights import check_manifest

_COMMON = dict(suppress_health_check=list(HealthCheck), derandomize=True, database=None)
settings.register_profile("fuzz-ci", max_examples=12, deadline=10_000, **_COMMON)
settings.register_profile("fuzz-long", max_examples=int(os.environ.get("FACEKD_FUZZ_EXAMPLES", "1000")),
                          deadline=None, **{**_COMMON, "derandomize": False})
FUZZ = settings.get_profile(os.environ.get("FACEKD_FUZZ_PROFILE", "fuzz-ci"))
HANG_S = 20  # one input taking longer than this is a hang

OUTCOMES: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    target = os.environ.get("FACEKD_FUZZ_COUNTS")
    if target:
        Path(target).write_text(json.dumps({k: dict(v) for k, v in sorted(OUTCOMES.items())}, indent=2))


@contextlib.contextmanager
def _time_limit(seconds: int):
    def _raise(*_):
        raise TimeoutError(f"no answer within {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _outcome(reader: str, path: Path, fn, *, errors=(FacekdError,), names_file=True):
    """Runs ``fn``; returns its result, or None after a clean error (which must name
    ``path`` and say more than the path)."""
    with _time_limit(HANG_S):
        try:
            result = fn()
        except errors as exc:
            msg = str(exc)
            if names_file:
                assert str(path) in msg or path.name in msg, f"{reader}: error does not name the file: {msg}"
            assert len(msg.replace(str(path), "").strip(" :")) > 3, f"{reader}: error gives no reason: {msg}"
            OUTCOMES[reader]["clean error"] += 1
            return None
    OUTCOMES[reader]["correct result"] += 1
    return result


def _fresh(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp("fuzz") / name


class _Marker:
    """A pickle whose loading would create a file: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _marker_pickle(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(_Marker(marker), protocol=protocol)


# --- pairs.txt ------------------------------------------------------------------------

_token = st.one_of(st.integers(-3, 700).map(str), st.sampled_from(["Aaron_Eckhart", "A B", "", "x" * 300, "\t", "10 300"]),
                   st.text(max_size=12))
_pairs_line = st.lists(_token, min_size=0, max_size=5).map("\t".join)


_name = st.text(st.sampled_from("abcXYZ_-'."), min_size=1, max_size=8)


@st.composite
def _valid_pairs(draw) -> list[str]:
    """A well-formed pairs.txt (folds, n; n same then n different lines per fold)."""
    folds, n = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    lines = [f"{folds}\t{n}"]
    for _ in range(folds):
        lines += [f"{draw(_name)}\t{draw(st.integers(1, 40))}\t{draw(st.integers(1, 40))}" for _ in range(n)]
        lines += [f"{draw(_name)}\t{draw(st.integers(1, 40))}\t{draw(_name)}\t{draw(st.integers(1, 40))}" for _ in range(n)]
    return lines


@FUZZ
@given(header=st.one_of(st.just("10\t300"), st.just("1\t1"), _pairs_line), lines=st.lists(_pairs_line, max_size=30),
       raw=st.one_of(st.none(), st.binary(max_size=200)), valid=st.one_of(st.none(), _valid_pairs()),
       damage=st.one_of(st.none(), st.tuples(st.integers(0, 40), _pairs_line)))
def test_pairs_txt(tmp_path_factory, header, lines, raw, valid, damage):
    path = _fresh(tmp_path_factory, "pairs.txt")
    if raw is not None:
        path.write_bytes(raw)
    elif valid is not None:
        if damage is not None:  # one line replaced by random tokens
            valid[damage[0] % len(valid)] = damage[1]
        path.write_text("\n".join(valid) + "\n")
    else:
        path.write_text("\n".join([header, *lines]) + "\n")
    pairs = _outcome("pairs.txt", path, lambda: parse_pairs(path))
    if pairs is not None:
        assert len(pairs.left) == len(pairs.right) == len(pairs.issame) == len(pairs.fold) == len(pairs)


# --- insightface .bin -----------------------------------------------------------------

_bin_obj = st.recursive(
    st.one_of(st.booleans(), st.integers(-2, 2), st.binary(max_size=8), st.none(), st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.tuples(inner, inner)), max_leaves=12)


@FUZZ
@given(obj=st.one_of(_bin_obj, st.lists(st.binary(max_size=6), min_size=2, max_size=8).flatmap(
           lambda imgs: st.tuples(st.just(imgs), st.lists(st.booleans(), min_size=len(imgs) // 2, max_size=len(imgs) // 2)))),
       protocol=st.integers(0, 5), cut=st.one_of(st.none(), st.integers(0, 200)), malicious=st.booleans())
def test_insightface_bin(tmp_path_factory, obj, protocol, cut, malicious):
    path = _fresh(tmp_path_factory, "lfw.bin")
    marker = path.parent / "EXECUTED"
    data = _marker_pickle(marker, protocol) if malicious else pickle.dumps(obj, protocol=protocol)
    path.write_bytes(data if cut is None else data[:cut])
    got = _outcome("insightface .bin", path, lambda: read_bin(path))
    assert not marker.exists(), "a .bin executed code"
    if got is not None:
        assert len(got.images) == 2 * len(got.issame) > 0


# --- .fkpack --------------------------------------------------------------------------

def _jpeg(seed: int, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


_GOOD_PACK: dict[str, bytes] = {}


def _good_pack(tmp: Path) -> bytes:
    if "pack" not in _GOOD_PACK:
        write_pack(tmp / "good.fkpack", [(f"p{i}/{i}.jpg", i % 2, _jpeg(i)) for i in range(4)], ["a", "b"], "112x96")
        _GOOD_PACK["pack"] = (tmp / "good.fkpack").read_bytes()
    return _GOOD_PACK["pack"]


_header_value = st.one_of(st.integers(-5, 10**12), st.text(max_size=4), st.none(), st.lists(st.integers(-1, 5), max_size=6),
                          st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@FUZZ
@given(mode=st.sampled_from(["truncate", "flip", "header", "random"]), pos=st.integers(0, 10**6),
       byte=st.integers(0, 255), key=st.sampled_from(["count", "files", "identities", "template", "meta", "version"]),
       value=_header_value, raw=st.binary(max_size=300))
def test_fkpack(tmp_path_factory, mode, pos, byte, key, value, raw):
    path = _fresh(tmp_path_factory, "data.fkpack")
    good = _good_pack(path.parent)
    if mode == "truncate":
        data = good[: pos % len(good)]
    elif mode == "flip":
        i = pos % len(good)
        data = good[:i] + bytes([byte]) + good[i + 1:]
    elif mode == "header":
        index_pos, header_len, magic = struct.unpack("<QQ8s", good[-24:])
        header = json.loads(good[-24 - header_len: -24])
        header[key] = value
        blob = json.dumps(header).encode()
        data = good[: -24 - header_len] + blob + struct.pack("<QQ8s", index_pos, len(blob), magic)
    else:
        data = b"FKDPACK1" + raw
    path.write_bytes(data)

    def read_all():
        pack = Pack(path)
        images = [pack.image(i) for i in range(len(pack))]
        return pack, images, [pack.labels[i] for i in range(len(pack))], pack.files, pack.identities, pack.template

    got = _outcome(".fkpack", path, read_all)
    if got is not None:
        pack, images, labels, files, identities, template = got
        assert len(files) == len(images) == len(labels) and all(0 <= lab < len(identities) for lab in labels)
        assert all(im.dtype == np.uint8 and im.ndim == 3 for im in images) and isinstance(template, str)


# --- YAML configs ---------------------------------------------------------------------

_KEYS = {
    "model": ["backbone", "head", "center_loss", "backbone_args", "nope"],
    "data": ["train", "min_images", "max_identities", "workers", "loader", "augment"],
    "optim": ["lr", "momentum", "weight_decay", "name", "betas"],
    "schedule": ["warmup_epochs", "gamma", "min_lr_ratio", "milestones"],
    "train": ["epochs", "batch_size", "seed", "precision", "log_every", "grad_clip"],
    "eval": ["every", "pairs_per_fold", "lfw"],
    "prune": ["ratio", "steps", "max_layer_ratio", "importance_batches"],
    "bogus": ["x"],
}
_scalar = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True, width=32), st.booleans(), st.none(),
                    st.text(max_size=5), st.lists(st.integers(-1, 3), max_size=3), st.just([]), st.just({}))
_sections = st.dictionaries(st.sampled_from(list(_KEYS)), st.just(None), max_size=4).flatmap(
    lambda secs: st.fixed_dictionaries({s: st.dictionaries(st.sampled_from(_KEYS[s]), _scalar, max_size=3) for s in secs}))
_EVIL = [
    "train: !!python/object/apply:os.system ['touch {m}']\n",
    "!!python/object/apply:os.system ['touch {m}']\n",
    "train: {{epochs: !!python/name:os.system }}\n",
    "a: &a [*a]\n",
    "train: {{epochs: 1e999}}\n",
    "1: 2\n",
    "- train\n",
    "train: [1, 2]\n",
    "extends: {m}\n",
    "extends: cfg.yaml\n",
    "\x00\x01",
]


@FUZZ
@given(sections=_sections, evil=st.one_of(st.none(), st.sampled_from(_EVIL)), cls=st.sampled_from([TrainConfig, PruneConfig]))
def test_yaml_configs(tmp_path_factory, sections, evil, cls):
    import yaml

    path = _fresh(tmp_path_factory, "cfg.yaml")
    marker = path.parent / "EXECUTED"
    path.write_text(evil.format(m=marker) if evil is not None else yaml.safe_dump(sections))
    _outcome("YAML config", path, lambda: load_config(cls, path))
    assert not marker.exists(), "a config executed code"


# --- checkpoints ----------------------------------------------------------------------

_CKPT: dict[str, bytes] = {}


def _student_ckpt() -> bytes:
    if "ckpt" not in _CKPT:
        from facekd.models.base import build_backbone

        net = build_backbone("student5")
        buf = io.BytesIO()
        torch.save(model_checkpoint(net, "student5", {}), buf)
        _CKPT["ckpt"] = buf.getvalue()
    return _CKPT["ckpt"]


@FUZZ
@given(mode=st.sampled_from(["foreign", "foreign-torch", "truncate", "flip", "other-backbone", "dict", "random"]),
       pos=st.integers(0, 10**7), other=st.sampled_from(["mobilefacenet", "resnet27_c10", "nosuch"]),
       obj=_bin_obj, raw=st.binary(max_size=200))
def test_checkpoints(tmp_path_factory, mode, pos, other, obj, raw):
    path = _fresh(tmp_path_factory, "model.ckpt")
    marker = path.parent / "EXECUTED"
    good = _student_ckpt()
    if mode == "foreign":
        data = _marker_pickle(marker)
    elif mode == "foreign-torch":
        buf = io.BytesIO()
        torch.save({"backbone": "student5", "model": _Marker(marker)}, buf)
        data = buf.getvalue()
    elif mode == "truncate":
        data = good[: pos % len(good)]
    elif mode == "flip":
        i = pos % len(good)
        data = good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1:]
    elif mode == "other-backbone":
        ckpt = torch.load(io.BytesIO(good), weights_only=True)
        ckpt["backbone"] = other
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        data = buf.getvalue()
    elif mode == "dict":
        buf = io.BytesIO()
        torch.save({"backbone": obj, "model": obj} if pos % 2 else obj, buf)
        data = buf.getvalue()
    else:
        data = raw
    path.write_bytes(data)
    got = _outcome("checkpoint", path, lambda: resolve(path))
    assert not marker.exists(), "a checkpoint executed code"
    if got is not None:
        assert mode in ("flip", "truncate", "dict") or mode == "other-backbone" and other == "student5"


def test_checkpoint_save_load_round_trip(tmp_path):
    from facekd.models.base import build_backbone

    torch.manual_seed(3)
    net = build_backbone("student5").eval()
    save_checkpoint(tmp_path / "a.ckpt", model_checkpoint(net, "student5", {}))
    got = backbone_state(load_checkpoint(tmp_path / "a.ckpt"))
    assert set(got) == set(net.state_dict())
    assert all(torch.equal(got[k], v) for k, v in net.state_dict().items())  # the values, not just the names
    again = resolve(tmp_path / "a.ckpt").backbone.eval()  # a fresh network built from the file alone
    x = torch.rand(2, 3, 112, 96)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=0, atol=0)


# --- ONNX files -----------------------------------------------------------------------

def _onnx_bytes(meta: dict[str, str]) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 48])
    node = helper.make_node("Flatten", ["x"], ["y"])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    return model.SerializeToString()


_meta_value = st.one_of(
    st.text(max_size=10), st.just("{}"), st.just("[]"), st.just("null"),
    st.dictionaries(st.sampled_from(["template", "mean", "std", "input_size", "flip_fusion", "bogus", "embedding_dim"]),
                    _scalar, max_size=4).map(json.dumps))


@FUZZ
@given(meta=st.dictionaries(st.sampled_from(["facekd", "facekd.model", "facekd.threshold", "other"]), _meta_value, max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 300)), raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_onnx_files(tmp_path_factory, meta, cut, raw):
    path = _fresh(tmp_path_factory, "model.onnx")
    data = raw if raw is not None else _onnx_bytes(meta)
    path.write_bytes(data if cut is None else data[:cut])
    got = _outcome("ONNX file", path, lambda: resolve(path).embedder("cpu"))
    if got is not None:
        out = got(np.zeros((2, *got.pre.input_size, 3), dtype=np.uint8)) if got.pre.input_size == (4, 4) else None
        assert out is None or out.shape[0] == 2


# --- weights-manifest entries ---------------------------------------------------------

_entry = st.dictionaries(
    st.sampled_from(["architecture", "url", "sha256", "filename", "format", "shipped", "source", "preprocessing"]),
    st.one_of(_scalar, st.dictionaries(st.sampled_from(["package", "module", "file", "sha256", "extra"]), _scalar, max_size=5)),
    max_size=8)


@FUZZ
@given(entries=st.one_of(st.dictionaries(st.text(max_size=6), _entry, max_size=3), _scalar))
def test_manifest_entries(tmp_path_factory, entries):
    path = _fresh(tmp_path_factory, "manifest.json")
    path.write_text(json.dumps(entries))
    got = _outcome("weights manifest", path, lambda: check_manifest(json.loads(path.read_text()), path))
    if got is not None:
        assert all(isinstance(e.get("architecture"), str) for e in got.values())


# --- align reports --------------------------------------------------------------------

@FUZZ
@given(report=st.one_of(_scalar, st.dictionaries(st.sampled_from(["fallback_files", "src", "images"]), _scalar, max_size=3)),
       raw=st.one_of(st.none(), st.binary(max_size=60)))
def test_align_reports(tmp_path_factory, report, raw):
    folder = tmp_path_factory.mktemp("aligned")
    path = folder / "align_report.json"
    path.write_bytes(raw if raw is not None else json.dumps(report).encode())
    got = _outcome("align report", path, lambda: recorded_fallbacks(folder))
    assert got is None or all(isinstance(f, str) for f in got)


# --- results .jsonl -------------------------------------------------------------------

_result = st.fixed_dictionaries({"protocol": st.sampled_from(["facekd-dev", 3]), "row": st.sampled_from(["A1", None]),
                                 "lfw_acc": st.one_of(st.floats(0, 1), st.text(max_size=3))},
                                optional={"seed": _scalar, "bogus": _scalar, "terms": _scalar})


@FUZZ
@given(lines=st.lists(st.one_of(_result.map(json.dumps), st.text(max_size=20), _scalar.map(json.dumps)), max_size=6))
def test_results_jsonl(tmp_path_factory, lines):
    path = _fresh(tmp_path_factory, "results.jsonl")
    path.write_text("\n".join(lines) + "\n")
    got = _outcome("results .jsonl", path, lambda: read_results(path))
    assert got is None or all(isinstance(r.lfw_acc, float) for r in got)


# --- images ---------------------------------------------------------------------------

_MODES = ["RGB", "L", "RGBA", "CMYK", "I;16", "P", "1", "LA", "I", "F"]
_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp", "GIF": ".gif"}


def _png_header(width: int, height: int) -> bytes:
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64


@FUZZ
@given(mode=st.sampled_from(_MODES), fmt=st.sampled_from(list(_FORMATS)), h=st.integers(1, 40), w=st.integers(1, 40),
       frames=st.integers(1, 3), cut=st.one_of(st.none(), st.floats(0, 1)),
       special=st.sampled_from([None, None, "empty", "huge", "text"]), huge=st.integers(9000, 2**31 - 1))
def test_images(tmp_path_factory, mode, fmt, h, w, frames, cut, special, huge):
    path = _fresh(tmp_path_factory, "photo" + _FORMATS[fmt])
    if special == "empty":
        path.write_bytes(b"")
    elif special == "huge":
        path.write_bytes(_png_header(huge, huge))
    elif special == "text":
        path.write_text("not an image at all\n")
    else:
        rng = np.random.default_rng(h * 100 + w)
        imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(frames)]
        try:
            imgs = [im.convert(mode) for im in imgs]
            buf = io.BytesIO()
            imgs[0].save(buf, fmt, save_all=frames > 1, append_images=imgs[1:])
        except (OSError, ValueError, KeyError):
            assume(False)  # PIL cannot write this mode in this format
        data = buf.getvalue()
        path.write_bytes(data if cut is None else data[: int(len(data) * cut)])
    got = _outcome("image", path, lambda: read_rgb(path), errors=(UnreadableImage,), names_file=False)
    if got is not None:
        assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
        if special is None and cut is None:
            assert got.shape[:2] == (h, w)


# --- regression tests: the faults the fuzzing found -----------------------------------

@pytest.mark.parametrize("value", ["not json", "[]", '{"template": 3}', '{"bogus": 1}', '{"template": "nosuch"}'])
def test_regression_onnx_malformed_preprocessing_metadata(tmp_path, value):
    """Was JSONDecodeError / TypeError from OnnxEmbedder."""
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx_bytes({"facekd": value}))
    with pytest.raises(FacekdError, match="m.onnx: metadata 'facekd'"):
        resolve(path).embedder("cpu")


@pytest.mark.parametrize("raw", [b"\x80", b"", b"[1, 2]", b"null", b'{"fallback_files": [1]}'])
def test_regression_align_report_not_a_report(tmp_path, raw):
    """Was JSONDecodeError / UnicodeDecodeError / AttributeError from recorded_fallbacks."""
    (tmp_path / "align_report.json").write_bytes(raw)
    with pytest.raises(FacekdError, match="align_report.json"):
        recorded_fallbacks(tmp_path)


@pytest.mark.parametrize("data", [[], {"m": 1}, {"m": {"url": "u"}}, {"m": {"architecture": "x", "source": {"package": 1}}},
                                  {"m": {"architecture": "x"}}])
def test_regression_manifest_entries(tmp_path, data):
    """Was KeyError / TypeError wherever an entry was used."""
    with pytest.raises(FacekdError, match="manifest.json"):
        check_manifest(data, tmp_path / "manifest.json")


def test_regression_pairs_header_with_unicode_digits(tmp_path):
    """'²'.isdigit() is True but int('²') fails: was a ValueError from parse_pairs."""
    (tmp_path / "pairs.txt").write_text("²\t1\nA 1 2\n")
    with pytest.raises(FacekdError, match="pairs.txt:1: expected a header"):
        parse_pairs(tmp_path / "pairs.txt")


@pytest.mark.parametrize("key, value", [("count", "3"), ("count", -1), ("files", ["a"]), ("identities", None),
                                        ("template", 3)])
def test_regression_pack_header_fields(tmp_path, key, value):
    """Were TypeError / IndexError from Pack or its items."""
    good = _good_pack(tmp_path)
    index_pos, header_len, magic = struct.unpack("<QQ8s", good[-24:])
    header = json.loads(good[-24 - header_len: -24])
    header[key] = value
    blob = json.dumps(header).encode()
    (tmp_path / "x.fkpack").write_bytes(good[: -24 - header_len] + blob + struct.pack("<QQ8s", index_pos, len(blob), magic))
    with pytest.raises(FacekdError, match="x.fkpack: corrupt facekd pack"):
        Pack(tmp_path / "x.fkpack")


def test_regression_pack_index_outside_the_file(tmp_path):
    """A footer pointing past the file: was OSError (negative seek) / IndexError."""
    good = _good_pack(tmp_path)
    (tmp_path / "x.fkpack").write_bytes(good[:-24] + struct.pack("<QQ8s", 10**9, 10**9, b"FKDPACK1"))
    with pytest.raises(FacekdError, match="x.fkpack: corrupt facekd pack"):
        Pack(tmp_path / "x.fkpack")


@pytest.mark.parametrize("backbone, args", [(False, {}), ([], {}), ("nosuch", {}), ("student5", {"bogus": 1}),
                                            ("student5", [])])
def test_regression_checkpoint_with_a_foreign_backbone_entry(tmp_path, backbone, args):
    """Were "unknown backbone False" (no file named), TypeError (unhashable list) and the
    backbone's own TypeError on unknown arguments."""
    torch.save({"backbone": backbone, "backbone_args": args, "model": {}}, tmp_path / "x.ckpt")
    with pytest.raises(FacekdError, match="x.ckpt"):
        resolve(tmp_path / "x.ckpt")


def test_regression_config_extending_a_missing_file(tmp_path):
    """Was an error naming only the missing file, not the config that extends it."""
    (tmp_path / "cfg.yaml").write_text("extends: base.yaml\n")
    with pytest.raises(FacekdError, match=r"cfg\.yaml: extends 'base\.yaml'"):
        load_config(TrainConfig, tmp_path / "cfg.yaml")


def test_remove_torn_temps_takes_only_that_files_leftovers(tmp_path):
    from facekd.io_utils import atomic_open, remove_torn_temps

    target = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as f:  # an interrupted write cleans up itself
        f.write(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"whole")
    torn = [tmp_path / ".last.pt.k9x2ab.tmp", tmp_path / ".last.pt.q1.tmp"]  # what SIGKILL mid-write leaves
    others = [tmp_path / ".best.pt.k9x2ab.tmp", tmp_path / "last.pt.tmp"]
    for p in torn + others:
        p.write_bytes(b"x")
    assert remove_torn_temps(target) == sorted(torn)
    assert sorted(tmp_path.iterdir()) == sorted([target, *others])
