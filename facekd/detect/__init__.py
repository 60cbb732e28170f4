"""Face detectors that facekd trains: single-shot students distilled from YuNet and MTCNN
(SPEC 4a), their teachers' raw maps, the training frames, the loss terms, and their
measurement on CMU+MIT.

Modules: ``model`` (the student networks, a registry), ``teacher`` (YuNet's raw maps
and hint tensor through ONNX Runtime; cached final detections as labels), ``data``
(mosaic training frames), ``losses`` (the composable terms), ``train`` (``facekd
distill-detector``), ``export`` (ONNX), ``cmumit`` (the CMU+MIT test set). The
per-cell parameterisation shared with YuNet is ``facekd.align.grid``; a trained
detector runs as ``facekd.align.fkdet.OnnxFaceDetector`` (``--detector
PATH.onnx``).
"""
