"""Classifier guidance helpers, importable from here as well: they build guidance functions (tensor code) and live in
``fastint.guidance``; the guided solvers hand them to the executor as ``Gradient`` requests."""

from ..guidance import classifier_guidance, mixture_class_guidance

__all__ = ["classifier_guidance", "mixture_class_guidance"]
