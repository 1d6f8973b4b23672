"""Sample-quality metrics: exact-oracle scores, two-sample distances, and feature-space FID/KID.

`oracle` scores samples against an exact Gaussian-mixture answer; `distances` compares two sample
sets (MMD^2, sliced W_2^2, energy distance); `fid` compares features from a project-trained
network (Fréchet distance, KID); `images` scores restorations (PSNR, SSIM through dm-pix).
"""

from diffjax.metrics.distances import energy_distance, median_bandwidth, mmd2, sliced_w2_squared, unbiased_mmd2
from diffjax.metrics.fid import frechet_distance, frechet_distance_gaussians, gaussian_stats, kid
from diffjax.metrics.images import psnr, ssim
from diffjax.metrics.oracle import mixture_scores

__all__ = [
    "energy_distance",
    "frechet_distance",
    "frechet_distance_gaussians",
    "gaussian_stats",
    "kid",
    "median_bandwidth",
    "mixture_scores",
    "mmd2",
    "psnr",
    "sliced_w2_squared",
    "ssim",
    "unbiased_mmd2",
]
