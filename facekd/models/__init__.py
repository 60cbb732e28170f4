"""Backbones (image -> embedding), registered by name with their preprocessing facts.

Importing this package registers the built-in backbones; ``build_backbone`` is the
entry point.
"""

from facekd.models.base import BACKBONES, BackboneCfg, backbone_cfg, build_backbone, load_backbone_weights
from facekd.models import facenet_casia, mobilefacenet, off_the_shelf, resnet_face, student5  # noqa: F401  (register them)

__all__ = ["BACKBONES", "BackboneCfg", "backbone_cfg", "build_backbone", "load_backbone_weights"]
