"""Write tests/golden/diffusers.npz: final samples of diffusers' schedulers driven by an exact model.

Not part of the test suite (CI has no PyTorch or diffusers). Run it by hand where both are
installed, with diffjax importable:

    python tests/golden/make_diffusers.py          # diffusers 0.42.1, torch 2.13, CPU

Every case drives one diffusers scheduler with the same model diffjax's test uses: the exact
eps-prediction of a 3-component Gaussian mixture (`tests/helpers.py`) on the scheduler's own
alphas_cumprod, computed in float64, from the same starting noise. DDIM runs with
clip_sample=False (its default clips x0 to [-1, 1], which diffjax does not reproduce). diffjax's side of the
comparison lives in tests/test_diffusers_parity.py.
"""

import os
import sys

import jax
import numpy as np
import torch

jax.config.update("jax_enable_x64", True)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for helpers
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository, for diffjax

import diffusers  # noqa: E402

import diffjax as dj  # noqa: E402
from helpers import mixture  # noqa: E402

# name: (scheduler class, its config, number of inference steps)
CASES = {
    "ddim_leading": (
        "DDIMScheduler",
        dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False),
        20,
    ),
    "ddim_trailing": ("DDIMScheduler", dict(timestep_spacing="trailing", clip_sample=False), 10),
    "plms": ("PNDMScheduler", dict(skip_prk_steps=True, timestep_spacing="leading", steps_offset=1), 20),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(solver_order=2), 20),
    "dpmpp_2m_short": ("DPMSolverMultistepScheduler", dict(solver_order=2), 8),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", dict(solver_order=3), 20),
    "dpmpp_3m_short": ("DPMSolverMultistepScheduler", dict(solver_order=3), 10),
    "unipc_bh2": ("UniPCMultistepScheduler", dict(solver_type="bh2"), 20),
    "unipc_bh2_short": ("UniPCMultistepScheduler", dict(solver_type="bh2"), 8),
    "deis": ("DEISMultistepScheduler", dict(solver_order=3), 20),
    "euler": ("EulerDiscreteScheduler", dict(timestep_spacing="linspace"), 20),
    "heun": ("HeunDiscreteScheduler", dict(timestep_spacing="linspace"), 20),
}


def exact_eps(gmm, sched, x, timestep):
    """The mixture's exact noise prediction at diffusers' (possibly fractional) timestep."""
    t = (float(timestep) + 1.0) / sched.num_train_timesteps
    x = np.asarray(x, dtype=np.float64)
    x0 = np.asarray(gmm.x0_mean(x, sched, t))
    return (x - float(sched.alpha(t)) * x0) / float(sched.sigma(t))


def run(name, noise):
    cls_name, config, n = CASES[name]
    scheduler = getattr(diffusers, cls_name)(**config)
    scheduler.set_timesteps(n)
    abar = scheduler.alphas_cumprod.numpy().astype(np.float64)
    sched = dj.schedules.discrete(alphas_cumprod=abar)
    gmm = mixture()
    x = torch.tensor(noise, dtype=torch.float64) * float(scheduler.init_noise_sigma)
    start = x.numpy().copy()
    for timestep in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, timestep)
        eps = torch.tensor(exact_eps(gmm, sched, x_in.numpy(), timestep), dtype=torch.float64)
        x = scheduler.step(eps, timestep, x).prev_sample
    return abar, start, x.numpy()


def main():
    noise = np.random.default_rng(0).standard_normal((8, 3))
    arrays = {"noise": noise, "diffusers_version": np.array(diffusers.__version__)}
    for name in CASES:
        abar, start, final = run(name, noise)
        arrays[f"{name}/alphas_cumprod"] = abar
        arrays[f"{name}/start"] = start
        arrays[f"{name}/final"] = final
        print(f"{name:18s} final[0] = {final[0]}")
    np.savez_compressed(os.path.join(HERE, "diffusers.npz"), **arrays)


if __name__ == "__main__":
    main()
