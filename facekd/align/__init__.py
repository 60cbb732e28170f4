"""Face alignment: a registered detector (MTCNN, YuNet) and a 5-point similarity warp onto a template.

The package is also callable: ``facekd.align(photo)`` is :func:`facekd.align.photo.align`
(the most central face of a photo, aligned, with its landmarks).
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    """``facekd.align`` the package, callable as ``facekd.align(photo)``.

    The Python API names the function after the package (as facenet-pytorch's users
    expect ``facekd.align(photo)``), and the import system binds ``facekd.align`` to the
    package once any of its modules is imported: so the package itself is the function.
    """

    def __call__(self, photo, **kwargs):
        """See :func:`facekd.align.photo.align`."""
        # Imported on call: `import facekd.align.template` must not load the detectors.
        from facekd.align.photo import align

        return align(photo, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
