"""Tests run in float64: exact oracles are compared to 1e-10, which float32 cannot resolve.

float32 behaviour is tested explicitly with float32 inputs.
"""

import jax

jax.config.update("jax_enable_x64", True)
