"""Evaluating embedders: ``metrics`` (the pure 10-fold verification protocol), ``embed``
(batched embedding with PyTorch or ONNX Runtime), ``pairs`` (LFW / pack / .bin pairs to
a result) and ``plots`` (ROC)."""
