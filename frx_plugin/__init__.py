"""frx: what do your face embeddings know? Attribute recovery from deep face representations.

Implements the idea of Ren et al., "Understanding Deep Face Representation via
Attribute Recovery" (IEEE TIFS 2024) as a plugin for training frameworks.
"""

from frx_plugin.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
