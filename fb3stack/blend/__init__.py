"""The second layer: blend and stack member OOF predictions, scored honestly by nested cross-validation."""

from fb3stack.blend.config import BlendConfig, MethodConfig, load_blend_config
from fb3stack.blend.fitted import BlendPredictError, FittedBlend, load_fitted_blend

__all__ = ["BlendConfig", "BlendPredictError", "FittedBlend", "MethodConfig", "load_blend_config", "load_fitted_blend"]
