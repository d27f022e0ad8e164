"""fb3stack: model zoo, honest blending and offline submission for FB3 / ELLIPSE essay scoring."""

from fb3stack.constants import TARGETS

__version__ = "0.1.0"
__all__ = ["TARGETS", "__version__"]
