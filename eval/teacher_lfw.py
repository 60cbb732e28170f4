"""LFW View 2 for the ready teachers and their ensemble, each on its own crops of the same
photos, with facekd's verification harness; embeddings are computed once per member
(image and mirror) and every recipe is scored from them.

    python eval/teacher_lfw.py --member facenet_casia=/tmp/lfw-facenet160 \\
        --member dlib_resnet=/tmp/lfw-dlib150 --member mobilefacenet=/tmp/lfw-112x96 \\
        --out /tmp/teacher_lfw.json

A member is MODEL=FOLDER: a model the hub resolves and an LFW folder of its crops with
pairs.txt (eval/teacher_crops.py). Each ensemble of two or more members is their
flip-fused embeddings (plain with --plain-only), each L2-normalised, concatenated
(facekd.distill.ensemble.combine), scored with and without the training folds' mean
subtracted (FaceNet's and MobileFaceNet's LFW recipes subtract it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from facekd.align.template import get_template
from facekd.image_io import read_rgb
from facekd.data.lfw import parse_pairs
from facekd.distill.ensemble import combine
from facekd.evaluation.embed import crop_loader, embed_images
from facekd.hub import resolve
from facekd.progress import progress_bar
from facekd.evaluation.metrics import verify


def _fuse(a: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    return np.concatenate([a, b], axis=1) if how == "concat" else a + b


def main(argv: list[str] | None = None) -> int:
    import facekd.hub.sources  # noqa: F401  (registers dlib_resnet with the hub)

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--member", action="append", required=True, help="MODEL=LFW_CROP_FOLDER")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="keep/reuse each member's embeddings here (.npz per member)")
    ap.add_argument("--plain-only", action="append", default=[], metavar="MODEL",
                    help="embed this member's images without their mirrors (half the time; no flip figure)")
    args = ap.parse_args(argv)
    results: dict[str, dict] = {}
    fused_by_member = []
    pairs = None
    for spec in args.member:
        model, folder = spec.split("=", 1)
        folder = Path(folder)
        p = parse_pairs(folder / "pairs.txt")
        if pairs is not None and (p.left, p.right) != (pairs.left, pairs.right):
            sys.exit(f"{folder}: a different pairs.txt from the first member's")
        pairs = p
        names = p.images()
        index = {n: i for i, n in enumerate(names)}
        resolved = resolve(model)
        emb = resolved.embedder()
        cached = args.cache / f"{model}.npz" if args.cache else None
        t0 = time.perf_counter()
        if cached and cached.is_file():
            z = np.load(cached)
            plain, mirror = z["plain"], (z["mirror"] if "mirror" in z else None)
        else:
            load = crop_loader(get_template(emb.pre.template), lambda i: read_rgb(folder / names[i]), lambda i: names[i])
            n = len(names)
            count = n if model in args.plain_only else 2 * n
            both = embed_images(emb, lambda i: load(i) if i < n else np.ascontiguousarray(load(i - n)[:, ::-1]),
                                count, progress=progress_bar(f"embed {model}"))
            plain, mirror = both[:n], (both[n:] if count == 2 * n else None)
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, plain=plain, **({} if mirror is None else {"mirror": mirror}))
        seconds = time.perf_counter() - t0
        i1 = np.array([index[n] for n in p.left])
        i2 = np.array([index[n] for n in p.right])
        issame, folds = np.array(p.issame), np.array(p.fold)
        fused = _fuse(plain, mirror, emb.pre.flip_fusion) if mirror is not None else None
        fused_by_member.append(fused if fused is not None else plain)
        recipes = [("plain", plain, emb.pre.subtract_fold_mean), ("plain, no mean subtraction", plain, False)]
        if fused is not None:
            recipes += [("flip", fused, emb.pre.subtract_fold_mean), ("flip, no mean subtraction", fused, False)]
        for label, e, sub in recipes:
            r = verify(e[i1], e[i2], issame, folds=p.folds, fold_ids=folds, subtract_mean=sub)
            results[f"{model} {label}"] = {**r.to_dict(), "images": len(names), "embedded": int(len(plain) * (1 + (fused is not None))),
                                           "embed_seconds": round(seconds, 1)}
            print(f"{model} {label}: {100 * r.accuracy:.2f} ± {100 * r.std:.2f}, AUC {r.auc:.4f}")
    models = [spec.split("=", 1)[0] for spec in args.member]
    for k in range(2, len(models) + 1):  # every ensemble of two or more members
        for combo in itertools.combinations(range(len(models)), k):
            e = combine([fused_by_member[j] for j in combo])
            for sub in (True, False):
                r = verify(e[i1], e[i2], issame, folds=pairs.folds, fold_ids=folds, subtract_mean=sub)
                label = "ensemble " + " + ".join(models[j] for j in combo) + ("" if sub else ", no mean subtraction")
                results[label] = r.to_dict()
                print(f"{label}: {100 * r.accuracy:.2f} ± {100 * r.std:.2f}, AUC {r.auc:.4f}")
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
