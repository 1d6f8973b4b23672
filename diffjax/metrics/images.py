"""Image-restoration scores: PSNR and SSIM per image, through dm-pix (DeepMind's JAX image library).

Images are channels-last (N, H, W, C) in diffjax's data range [-1, 1]; both scores map them to
[0, 1] and clip there first (a restoration that overshoots the range is scored as the image it
would display). Higher is better for both.
"""

from __future__ import annotations

import jax.numpy as jnp


def _unit(x):
    return jnp.clip((jnp.asarray(x, jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def _check(x, reference):
    if jnp.ndim(x) != 4 or jnp.shape(x) != jnp.shape(reference):
        raise ValueError(
            f"images must be (N, H, W, C) arrays of one shape, got {jnp.shape(x)} and reference {jnp.shape(reference)}"
        )


def psnr(x, reference):
    """Peak signal-to-noise ratio in dB of each image against its reference, (N,).

    Args:
      x: (N, H, W, C) images in [-1, 1].
      reference: the ground truth, same shape.

    Returns:
      10 log10(1 / MSE) per image on the [0, 1] scale (inf where an image equals its reference).

    Raises:
      ValueError: if the shapes differ or are not (N, H, W, C).
    """
    import dm_pix

    _check(x, reference)
    return dm_pix.psnr(_unit(x), _unit(reference))


def ssim(x, reference, *, filter_size: int | None = None):
    """Structural similarity (Wang et al. 2004) of each image against its reference, (N,).

    Args:
      x: (N, H, W, C) images in [-1, 1].
      reference: the ground truth, same shape.
      filter_size: the Gaussian window's side (sigma 1.5); default 11, or the largest odd side
        that fits for images smaller than 11 pixels (7 for 8x8 digits).

    Returns:
      The mean SSIM map per image, in [-1, 1] (1: identical).

    Raises:
      ValueError: if the shapes differ or are not (N, H, W, C).
    """
    import dm_pix

    _check(x, reference)
    side = min(jnp.shape(x)[1:3])
    if filter_size is None:
        filter_size = min(11, side - 1 if side % 2 == 0 else side)
    return dm_pix.ssim(_unit(x), _unit(reference), filter_size=filter_size)
