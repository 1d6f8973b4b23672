"""Data that ships with diffjax: exact oracles now; toy sets, digits and procedural images later."""

from diffjax.data.gaussian_mixture import GaussianMixture, ring

__all__ = ["GaussianMixture", "ring"]
