"""The ``facekd`` command: one module per command group (``main``: align, eval, pack,
models; ``demo``; ``train``: train, distill; ``deploy``: export, verify, embed, bench;
``compress``: prune, soup, multi-exit, exits). The CLI parses and prints; the library computes."""

from facekd.cli.main import main

__all__ = ["main"]
