"""Sample-quality metrics; `oracle` scores samples against an exact Gaussian-mixture answer."""

from diffjax.metrics.oracle import mixture_scores

__all__ = ["mixture_scores"]
