"""facekd: compress face-recognition models by knowledge distillation.

Importing the package does no work; the command line is ``facekd`` (``facekd.cli``).
"""

__version__ = "0.1.0"
