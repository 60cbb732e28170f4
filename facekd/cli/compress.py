"""The ``facekd`` compression commands beyond a new student: ``facekd prune`` (structured
pruning with distillation recovery), ``facekd soup`` (average recoveries of one network),
``facekd multiexit`` (train an anytime multi-exit embedder) and ``facekd exits`` (export
its exits to ONNX, time them, pick one for a latency budget)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from facekd.cli.train import report_run, add_run_args


def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="structured pruning (taylor / l1 / l1_next / random) in steps, each recovered by distillation",
        description="Remove filters of a trained facekd checkpoint through Torch-Pruning, in prune.steps "
        "steps, each followed by train.epochs of recovery distilled from the unpruned model. Writes "
        "RUN/stepK/pruned.pt (before recovery), RUN/stepK/checkpoints/ (after), RUN/pruned.pt (the final "
        "model) and RUN/prune.json (params, MACs, LFW before/after per step).",
    )
    add_run_args(p, "configs/prune/", "prune.ratio=0.25")
    p.set_defaults(func=_run_prune)


def _run_prune(args: argparse.Namespace) -> int:
    from facekd.config import load_config
    from facekd.prune import require_torch_pruning

    require_torch_pruning()
    from facekd.prune.config import PruneConfig
    from facekd.prune.run import PRUNED, RESULT, run_prune

    cfg = load_config(PruneConfig, args.config, args.overrides)
    result = run_prune(cfg, args.out, resume=args.resume)
    lfw = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    print(f"{'step':>4} {'removed':>8} {'params':>9} {'MMAC':>8} {'LFW before':>11} {'LFW after':>10}")
    print(f"{'src':>4} {0:>8.2f} {result.source_params / 1e6:>8.2f}M {result.source_macs / 1e6:>8.1f} {lfw(result.source_lfw):>11}")
    if result.sparsity is not None:
        sp = result.sparsity
        print(f"sparsity: {sp.epochs} epoch(s) at L1 weight {sp.weight:g}, filters' L1 {sp.l1_before:.4g} -> "
              f"{sp.l1_after:.4g}, LFW after {lfw(sp.lfw_after)}")
    for r in result.steps:
        print(f"{r.step:>4} {r.removed:>8.2f} {r.params / 1e6:>8.2f}M {r.macs / 1e6:>8.1f} {lfw(r.lfw_before):>11} {lfw(r.lfw_after):>10}")
    print(f"pruned model: {args.out / PRUNED}; table: {args.out / RESULT}")
    return 0


def _add_multiexit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "multiexit",
        help="train a multi-exit (anytime) embedder: per-exit loss + distillation between exits",
        description="Attach early exits (exits.points) to a backbone and train every exit with the "
        "distill.terms plus the inter-exit KL term; same run folder, checkpoints and --resume as facekd train.",
    )
    add_run_args(p, "configs/multiexit/", "exits.kl_weight=0")
    p.set_defaults(func=_run_multiexit)


def _run_multiexit(args: argparse.Namespace) -> int:
    from facekd.config import load_config
    from facekd.multiexit.config import MultiExitConfig
    from facekd.multiexit.objective import make_multiexit_objective
    from facekd.train.loop import fit

    cfg = load_config(MultiExitConfig, args.config, args.overrides)
    return report_run(fit(cfg, args.out, resume=args.resume, make_objective=make_multiexit_objective), args.out)


def _add_exits(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "exits",
        help="a multi-exit model's exits on ONNX Runtime: all as outputs, latencies, or the one a budget allows",
        description="Without --budget-ms: write one ONNX graph with every exit as an output ('embedding' = "
        "the full model, then exit1..). With --budget-ms: time every exit (ONNX Runtime, batch 1, one "
        "thread) or read those figures (--costs), and export the deepest exit that fits as a normal "
        "embedder ONNX (what eval, verify and embed read).",
    )
    p.add_argument("model", help="multi-exit facekd checkpoint")
    p.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--budget-ms", type=float, help="latency budget per face (ms, one thread)")
    p.add_argument("--costs", type=Path, help="per-exit figures written earlier (ONNX.exits.json) instead of timing now")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    p.set_defaults(func=_run_exits)


def _run_exits(args: argparse.Namespace) -> int:
    from facekd.deploy.export import check_parity, default_normalize, export_onnx, synthetic_inputs
    from facekd.onnx_metadata import ModelInfo, model_metadata
    from facekd.io_utils import atomic_write_json
    from facekd.models.exits import select_exit
    from facekd.hub import resolve
    from facekd.multiexit.deploy import budget_exit, costs_from_json, costs_to_json, exit_latencies, export_all_exits

    model = resolve(args.model).require_backbone("exits").eval()
    if args.budget_ms is None:
        report = export_all_exits(model, args.onnx)
        print(f"{args.onnx}: outputs {', '.join(report['outputs'])}; parity (lowest cosine) "
              + ", ".join(f"{k} {v:.6f}" for k, v in report["min_cosine"].items()))
        return 0
    if args.costs:
        costs = costs_from_json(json.loads(args.costs.read_text()))
    else:
        costs = exit_latencies(model, rounds=args.rounds)
        atomic_write_json(Path(str(args.onnx) + ".exits.json"), costs_to_json(costs))
    for c in costs:
        print(f"exit {c.exit}: {c.params / 1e6:.2f} M params, {c.macs / 1e6:.1f} MMAC, "
              f"{c.ort_ms_1t:.2f} ms/face (ORT, 1 thread; {c.ort_ms_min:.2f}-{c.ort_ms_max:.2f})")
    chosen = budget_exit(costs, args.budget_ms)
    select_exit(model, chosen.exit)
    pre = model.cfg.pre
    normalize = default_normalize(pre)
    info = ModelInfo(f"{model.cfg.name}@exit{chosen.exit}", tuple(model.cfg.input_size), model.cfg.embedding_dim, normalize)
    export_onnx(model, args.onnx, input_size=tuple(model.cfg.input_size), normalize=normalize,
                metadata=model_metadata(pre, info))
    parity = check_parity(model, args.onnx, synthetic_inputs(8, tuple(model.cfg.input_size)), normalize=normalize,
                          real_faces=False)
    print(f"budget {args.budget_ms:g} ms: exit {chosen.exit} of {model.num_exits} ({chosen.ort_ms_1t:.2f} ms) -> "
          f"{args.onnx} (parity: lowest cosine {parity.worst:.6f})")
    return 0


def _add_soup(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "soup",
        help="average the weights of models fine-tuned from one start (a uniform model soup)",
        description="Average the weights of two or more facekd checkpoints of one network (for example "
        "recoveries of one pruned or surgically changed model with other seeds or augmentations) into one "
        "model-only checkpoint, which eval, export and board read like any other. Prints how far each "
        "ingredient lies from the soup (models trained from different random starts lie far apart, and "
        "their average is no model).",
    )
    p.add_argument("checkpoints", type=Path, nargs="+", metavar="CHECKPOINT", help="facekd checkpoints of one network")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.set_defaults(func=_run_soup)


def _run_soup(args: argparse.Namespace) -> int:
    from facekd.train.checkpoint import save_checkpoint
    from facekd.train.soup import make_soup

    soup = make_soup(args.checkpoints)
    save_checkpoint(args.out, soup.checkpoint)
    for path, d in zip(args.checkpoints, soup.distances):
        print(f"{path}: {100 * d:.2f}% of the soup's weight norm away from it")
    print(f"soup of {len(args.checkpoints)}: {args.out} (evaluate: facekd eval lfw --model {args.out} --data LFW --flip)")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_prune, _add_soup, _add_multiexit, _add_exits]
