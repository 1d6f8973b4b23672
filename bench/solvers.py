"""Error against NFE for every solver on the exact Gaussian-mixture oracle (8-D, 3 blobs).

    python bench/solvers.py [--out bench/solvers.png] [--samples 2000]

Every solver samples from the exact p_T on a logSNR-uniform grid on vp_linear ending at
t = 1e-3; the number of steps is chosen so that the NFE is at most each budget. Deterministic
solvers are scored by the median distance to the probability-flow ODE solved by diffrax from
the same starts (the median, because a few starts near a basin boundary switch modes under any
coarse solver and would dominate a mean); every solver by the gap of its mean exact log-density
to that of exact samples and by the worst relative error of a within-mode standard deviation,
whose Monte Carlo floor (exact samples) is printed. Prints a table and saves a log-log plot.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj

jax.config.update("jax_enable_x64", True)
S = dj.solvers

SOLVERS = {
    "ddim": S.ddim(),
    "euler": S.euler(),
    "heun": S.heun(),
    "dpm_solver_2": S.dpm_solver(2),
    "dpm_solver_3": S.dpm_solver(3),
    "dpmpp_2s": S.dpmpp_2s(),
    "dpmpp_2m": S.dpmpp_2m(),
    "dpmpp_3m_faithful": S.dpmpp_3m("faithful"),
    "dpmpp_3m_corrected": S.dpmpp_3m("corrected"),
    "s_pndm": S.pndm("s"),
    "f_pndm": S.pndm("f"),
    "plms": S.plms(),
    "ddpm": S.ddpm(),
    "euler_ancestral": S.euler_ancestral(),
    "dpmpp_2m_sde": S.dpmpp_2m_sde(),
    "euler_maruyama": S.euler_maruyama(),
}
for name in ("unipc", "deis"):  # present once their modules land
    if name in S.REGISTRY:
        SOLVERS[name] = S.REGISTRY[name]()
BUDGETS = (10, 20, 50, 100, 200)


def blobs():
    means = np.array([[1.5, -1.0, 0.5, 0.0, 1.0, -0.5, 0.2, 2.0],
                      [-2.0, 0.5, 1.0, 1.0, -1.0, 0.0, -0.7, 0.3],
                      [0.3, 2.0, -1.5, -1.0, 0.0, 1.5, 1.1, -1.2]])  # fmt: skip
    scales = np.array([[0.3, 0.5, 0.2, 0.7, 0.1, 0.4, 0.25, 0.6],
                       [0.1, 0.4, 1.0, 0.2, 0.3, 0.6, 0.5, 0.15],
                       [0.6, 0.2, 0.35, 0.4, 0.8, 0.1, 0.3, 0.45]])  # fmt: skip
    return dj.data.GaussianMixture([0.2, 0.5, 0.3], means, scales)


def steps_within(solver, budget, den, sched, x_T):
    """The most steps whose NFE is at most `budget`; NFE is affine in the steps, read off two runs."""
    nfe = {n: int(dj.sample(solver, den, dj.timesteps.logsnr_uniform(sched, n), jax.random.key(0), x_T[:1])[1].nfe)
           for n in (4, 8)}  # fmt: skip
    per_step = (nfe[8] - nfe[4]) // 4
    return max((budget - (nfe[4] - 4 * per_step)) // per_step, 1)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/solvers.png")
    parser.add_argument("--samples", type=int, default=4000)
    args = parser.parse_args(argv)

    gmm, sched = blobs(), dj.schedules.vp_linear()
    den = gmm.denoiser(sched)
    t_T, t_0 = sched.t_max, sched.t_min
    x_T = gmm.sample(jax.random.key(1), args.samples, sched, t_T)
    reference = gmm.pf_ode(x_T, sched, t_T, t_0)
    exact = gmm.sample(jax.random.key(2), args.samples, sched, t_0)
    truth = dj.metrics.mixture_scores(gmm, exact, sched, t_0)

    rows = []
    for name, solver in SOLVERS.items():
        for budget in BUDGETS:
            n = steps_within(solver, budget, den, sched, x_T)
            if n < len(solver.head) + len(solver.tail):
                continue  # the budget does not cover the solver's warm-up
            x, info = dj.sample(solver, den, dj.timesteps.logsnr_uniform(sched, n), jax.random.key(3), x_T)
            other, _ = dj.sample(solver, den, dj.timesteps.logsnr_uniform(sched, n), jax.random.key(4), x_T)
            distance = jnp.sqrt(jnp.sum((x - reference) ** 2, axis=-1))
            median = float(jnp.median(distance)) if bool(jnp.array_equal(x, other)) else None
            scores = dj.metrics.mixture_scores(gmm, x, sched, t_0)
            gap = scores["mean_log_p"] - truth["mean_log_p"]
            rows.append((name, budget, n, int(info.nfe), median, gap, scores["std_rel_err"]))

    print(
        f"\n8-D mixture, vp_linear, logSNR grid to t = {t_0}, {args.samples} samples; exact samples: "
        f"E log p = {truth['mean_log_p']:.4f}, std error {truth['std_rel_err']:.3f} (the Monte Carlo floor)"
    )
    print(f"{'solver':<20}{'budget':>7}{'steps':>7}{'NFE':>6}{'PF-ODE median':>15}{'dE log p':>10}{'std err':>9}")
    for name, budget, n, nfe, median, gap, std_err in rows:
        median_text = "-" if median is None else f"{median:.3e}"
        print(f"{name:<20}{budget:>7}{n:>7}{nfe:>6}{median_text:>15}{gap:>10.4f}{std_err:>9.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.get_cmap("tab20").colors
    for i, name in enumerate(SOLVERS):
        mine = [r for r in rows if r[0] == name]
        style = dict(color=colors[i % 20], marker="os^vD"[i % 5], label=name)
        if mine[0][4] is not None:
            axes[0].loglog([r[3] for r in mine], [r[4] for r in mine], **style)
        axes[1].loglog([r[3] for r in mine], [abs(r[5]) for r in mine], **style)
    axes[0].set(xlabel="NFE", ylabel="median distance to the exact PF-ODE", title="deterministic solvers")
    axes[1].set(xlabel="NFE", ylabel="|E log p - E log p (exact samples)|", title="all solvers")
    for ax in axes:
        ax.legend(fontsize=7)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
