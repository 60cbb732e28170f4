"""Anytime multi-exit embedders (Phuong & Lampert, ICCV 2019).

Exits are attached to a backbone by configuration (:class:`facekd.models.exits.MultiExit`);
:mod:`facekd.multiexit.objective` trains them with a per-exit loss plus the distillation
between exits (``exit_kl`` in ``DISTILL_LOSSES``), optionally plus an external teacher,
through ``facekd train``'s loop; :mod:`facekd.multiexit.deploy` exports every exit to
ONNX and picks the deepest exit a latency budget allows.
"""
