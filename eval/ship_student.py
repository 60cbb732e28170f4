"""Ship a trained student: ONNX into weights/ (INT8 where it is faster and faithful),
its LFW figures and its speed-up over its teacher measured, and a manifest entry that
``facekd demo`` and the hub read (``--model NAME``).

    python eval/ship_student.py /tmp/s3/paper-cpu/A_Hard+FeatureNorm-seed0/checkpoints/last.pt \
        --name student5_facenet_casia --lfw /tmp/lfw_pairs_q85.fkpack --calib /tmp/dev_train_q85.fkpack \
        --teacher-lfw /tmp/fkd11/teacher_lfw.json --reproduce "python eval/reproduce_paper.py ..."

The teacher is the one the checkpoint's config names (``teacher.model``). With
``--weights``, CHECKPOINT is a registered model instead and what ships is its own INT8
form, timed against its FP32 (``--role``, e.g. "INT8 of mobilefacenet", names it in the
demo's table):

    python eval/ship_student.py mobilefacenet --weights mobilefacenet_casia --name mobilefacenet_casia_int8 \
        --role "INT8 of mobilefacenet" --lfw ... --calib ... --teacher-lfw ... --reproduce "..."

Both are timed
with ONNX Runtime, batch 1, one thread, in interleaved rounds on this machine; the
teacher's LFW figure comes from ``--teacher-lfw`` (eval/teacher_lfw.py, on its own crops).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facekd.errors import FacekdError  # noqa: E402


def _export(model: str, weights: str | None, dest: Path, calib: Path, lfw: Path) -> dict:
    """INT8 when a recipe is faster and faithful, else FP32; the export report."""
    from facekd.deploy.export import ExportRequest, run_export

    try:
        return run_export(ExportRequest(model=model, weights=weights, onnx=dest.with_suffix(".int8.onnx"),
                                        int8="static", calib=calib, lfw=lfw))
    except FacekdError as exc:
        print(f"INT8 not shipped ({exc}); shipping FP32")
        return run_export(ExportRequest(model=model, weights=weights, onnx=dest, calib=calib, lfw=lfw))


def _lfw(path: Path, lfw: Path) -> dict:
    from facekd.evaluation.embed import OnnxEmbedder
    from facekd.evaluation.pairs import evaluate_pairs_plain_and_flip

    out = {}
    for label, ev in evaluate_pairs_plain_and_flip(OnnxEmbedder(path), lfw).items():
        out[label], out[f"{label}_std"] = round(100 * ev.result.accuracy, 2), round(100 * ev.result.std, 2)
    return out


def _teacher_ms(teacher: str, weights: str | None, student: Path, tmp: Path) -> tuple[float, float, int]:
    """(student ms, teacher ms, teacher params) with ONNX Runtime, interleaved."""
    from facekd.experiments.compare import ComparedModel, onnx_file, onnx_params, time_onnx
    from facekd.hub import resolve

    t = ComparedModel(teacher, "teacher", resolve(teacher, weights))
    tpath = onnx_file(t, tmp)
    ms = time_onnx({"student": student, "teacher": tpath}, rounds=25)
    return ms["student"], ms["teacher"], onnx_params(tpath)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="a facekd checkpoint (or, with --weights, a registered model)")
    ap.add_argument("--weights", help="weights of a registered model: ship that model itself (its INT8 form)")
    ap.add_argument("--role", help="what the demo's table calls it (default: student of its teacher)")
    ap.add_argument("--name", required=True, help="manifest name, e.g. student5_facenet_casia")
    ap.add_argument("--lfw", type=Path, required=True, help="LFW pack or folder (figures and the verify threshold)")
    ap.add_argument("--calib", type=Path, required=True, help="aligned training crops (INT8 calibration)")
    ap.add_argument("--teacher-lfw", type=Path, required=True, help="eval/teacher_lfw.py's JSON")
    ap.add_argument("--reproduce", required=True, help="the command that trained the checkpoint")
    ap.add_argument("--description", default="", help="one line on what it is")
    args = ap.parse_args()

    from facekd.download import sha256_of
    from facekd.train.speed import cpu_info
    from facekd.hub import resolve
    from facekd.io_utils import atomic_write_bytes
    from facekd.weights import _manifest_path

    if args.weights:  # a registered model shipped as itself: its own teacher
        teacher, weights, architecture = str(args.checkpoint), args.weights, str(args.checkpoint)
    else:
        ckpt_cfg = resolve(args.checkpoint).checkpoint["config"]
        teacher, weights = ckpt_cfg["teacher"]["model"], ckpt_cfg["teacher"].get("weights")
        architecture = ckpt_cfg["model"]["backbone"]
    dest = REPO / "weights" / f"{args.name}.onnx"
    report = _export(str(args.checkpoint), args.weights, dest, args.calib, args.lfw)
    shipped = Path(report["onnx"])
    fp32_lfw = _lfw(Path(report["fp32"]), args.lfw) if "int8" in report else None  # what INT8 costs in accuracy
    if shipped != dest:  # the INT8 file takes the plain name; the FP32 one is not shipped
        shipped = shipped.rename(dest)
    for extra in dest.parent.glob(f"{args.name}.*.onnx"):
        extra.unlink()
    lfw = _lfw(shipped, args.lfw)
    with tempfile.TemporaryDirectory() as tmp:
        s_ms, t_ms, t_params = _teacher_ms(teacher, weights, shipped, Path(tmp))
    t_lfw = json.loads(args.teacher_lfw.read_text())
    tkey = next(k for k in (f"{teacher} flip", f"{teacher} plain") if k in t_lfw)
    entry = {
        "architecture": architecture, "format": "onnx", "shipped": dest.name, "filename": dest.name,
        "sha256": sha256_of(dest),
        "description": args.description,
        "licence": "the teacher's and the training photos' terms (CelebA: non-commercial research)",
        "int8": ({k: report["int8"][k] for k in ("recipe", "ratio", "fp32_ms", "int8_ms", "cosine_mean", "cosine_min")}
                 if "int8" in report else None),
        "lfw": {**lfw, "data": str(args.lfw.name), "protocol": "LFW View 2, 10 folds, MTCNN crops (JPEG q85 pack)"},
        "lfw_fp32": fp32_lfw,
        "reproduce": args.reproduce,
        **({"role": args.role} if args.role else {}),
        "teacher": {"model": teacher, **({"weights": weights} if weights else {}),
                    "recorded": {"lfw_flip" if "flip" in tkey else "lfw_plain": round(t_lfw[tkey]["accuracy"], 2),
                                 "lfw_flip_std": round(t_lfw[tkey]["std"], 2), "ms": round(t_ms, 2), "params": t_params,
                                 "how": "LFW: eval/teacher_lfw.py on its own crops; ms: ONNX Runtime, batch 1, one thread"}},
        "measured": {"student_ms": round(s_ms, 2), "teacher_ms": round(t_ms, 2), "speedup": round(t_ms / s_ms, 2),
                     "cpu": cpu_info().describe(), "machine": platform.node()},
    }
    man = json.loads(_manifest_path().read_text())
    man[args.name] = entry
    text = json.dumps(man, indent=2, ensure_ascii=False)
    text = re.sub(r"\[\s+(\d+),\s+(\d+)\s+\]", r"[\1, \2]", text)  # input sizes on one line, as written by hand
    atomic_write_bytes(_manifest_path(), (text + "\n").encode())
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
