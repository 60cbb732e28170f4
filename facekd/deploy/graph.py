"""Exact rewrites of an exported ONNX graph that ONNX Runtime runs faster.

ONNX Runtime 1.32's ``PRelu`` kernel is slow on the CPU: in MobileFaceNet (33 PReLUs)
it took half of the FP32 time at batch 1 (9.4 of 18.6 ms, ORT profiler, one thread),
more than all 50 convolutions. Written as ``x + (slope - 1) * min(x, 0)`` (three
elementwise ops ORT vectorises) the same model runs 1.5x faster, and INT8 graphs,
where PReLU has no integer kernel and stays in FP32, gain the same way.

Each rewrite takes and returns an ``onnx.ModelProto`` (modified in place) and keeps the
function the graph computes; ``facekd.deploy.export`` checks that against PyTorch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import NodeProto, helper, numpy_helper

# Names of the nodes a decomposed PReLU becomes start with this (quantize.py keeps them FP32).
PRELU_PREFIX = "facekd_prelu/"

GraphRewrite = Callable[["onnx.ModelProto"], int]  # noqa: F821 - returns nodes rewritten


def replace_nodes(model, nodes: list) -> None:
    """Sets the graph's node list (copies first: protobuf detaches deleted messages)."""
    copies = []
    for node in nodes:
        c = NodeProto()
        c.CopyFrom(node)
        copies.append(c)
    del model.graph.node[:]
    model.graph.node.extend(copies)


def initializers(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def producers_of(model) -> dict:
    """The node that writes each tensor, by tensor name."""
    return {o: n for n in model.graph.node for o in n.output}


def consumers_of(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def pool_before_prelu(model) -> int:
    """Swaps ``PRelu -> MaxPool`` into ``MaxPool -> PRelu`` where every slope is >= 0.

    A PReLU with non-negative slopes is non-decreasing in each channel, so it commutes
    with a max over a window of that channel; after the swap it touches a quarter of
    the values (2x2 pooling). Slopes below zero (MobileFaceNet learns some) are left
    alone.

    Returns:
        The number of pairs swapped.
    """
    inits = initializers(model)
    consumers = consumers_of(model)
    graph_outputs = {o.name for o in model.graph.output}
    swapped = 0
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits or node.output[0] in graph_outputs:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "MaxPool" or len(users[0].output) != 1:
            continue
        if np.min(numpy_helper.to_array(inits[node.input[1]])) < 0:
            continue
        pool = users[0]
        x, mid, y = node.input[0], node.output[0], pool.output[0]
        pool.input[0], pool.output[0] = x, mid
        node.input[0], node.output[0] = mid, y
        swapped += 1
    if swapped:
        _topological_sort(model)
    return swapped


def decompose_prelu(model) -> int:
    """Rewrites each ``PRelu(x, slope)`` with a constant slope as
    ``Add(x, Mul(Min(x, 0), slope - 1))``.

    Returns:
        The number of PReLUs rewritten.
    """
    inits = initializers(model)
    zero = "facekd_zero"
    nodes, done, shifted = [], 0, {}
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            nodes.append(node)
            continue
        x, s = node.input
        y = node.output[0]
        if s not in shifted:
            slope = numpy_helper.to_array(inits[s]).astype(np.float32)
            shifted[s] = f"{s}_minus_one"
            model.graph.initializer.append(numpy_helper.from_array(slope - np.float32(1.0), shifted[s]))
        base = node.name or y
        nodes += [
            helper.make_node("Min", [x, zero], [f"{y}_neg"], name=f"{PRELU_PREFIX}{base}/min"),
            helper.make_node("Mul", [f"{y}_neg", shifted[s]], [f"{y}_scaled"], name=f"{PRELU_PREFIX}{base}/mul"),
            helper.make_node("Add", [x, f"{y}_scaled"], [y], name=f"{PRELU_PREFIX}{base}/add"),
        ]
        done += 1
    if done:
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
        replace_nodes(model, nodes)
        drop_unused_initializers(model)  # the PRelu slopes
    return done


def drop_unused_initializers(model) -> None:
    """Removes the initializers no node reads any more."""
    used = {name for n in model.graph.node for name in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)


def _topological_sort(model) -> None:
    """Reorders nodes so each comes after the producers of its inputs."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a missing input after a rewrite")
        pending = rest
    replace_nodes(model, ordered)


# Applied in this order by ``optimize_graph``; pooling first so fewer values are decomposed.
REWRITES: dict[str, GraphRewrite] = {
    "pool_before_prelu": pool_before_prelu,
    "decompose_prelu": decompose_prelu,
}


def optimize_graph(model) -> dict[str, int]:
    """Applies every rewrite in ``REWRITES``; returns how many nodes each changed."""
    return {name: fn(model) for name, fn in REWRITES.items()}
