"""Shipping an embedder: ONNX export with a parity check, INT8 quantization, inference
from photos with ONNX Runtime, and the size/latency benchmark.

One concept per module: ``export`` (PyTorch -> ONNX with :mod:`facekd.onnx_metadata`, parity), ``graph``
(exact ONNX rewrites that make ONNX Runtime faster), ``quantize`` (INT8 recipes and the
rule that never ships a slower model), ``photos`` (detect, align, embed, verify) and
``bench`` (parameters, size, MACs, latency).
"""
