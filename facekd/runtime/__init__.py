"""The one home of the mechanisms every role package shares at run time.

- :mod:`facekd.runtime.onnx`: ONNX Runtime sessions (threads, providers, options);
- :mod:`facekd.runtime.timing`: latency, measured one way for every table and the demo.

Input normalisation and row L2-normalisation live in :mod:`facekd.preprocessing`.
Nothing here imports torch.
"""
