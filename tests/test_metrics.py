"""Oracle scores: near zero for exact samples, large for samples that are visibly wrong."""

import jax
import numpy as np

import diffjax as dj
from helpers import mixture


def test_mixture_scores_separate_exact_from_wrong_samples():
    gmm, sched, t = mixture(dim=2), dj.schedules.vp_linear(), 0.05
    exact = gmm.sample(jax.random.key(0), 20_000, sched, t)
    reference = gmm.sample(jax.random.key(1), 20_000, sched, t)
    good, truth = dj.metrics.mixture_scores(gmm, exact, sched, t), dj.metrics.mixture_scores(gmm, reference, sched, t)
    assert good["mode_tv"] < 0.01 and good["std_rel_err"] < 0.03
    assert abs(good["mean_log_p"] - truth["mean_log_p"]) < 0.03
    spread = dj.metrics.mixture_scores(gmm, 1.3 * exact - 0.3 * np.asarray(gmm.means).mean(0), sched, t)
    assert spread["std_rel_err"] > 0.25 and spread["mean_log_p"] < truth["mean_log_p"] - 0.2
    one_mode = dj.metrics.mixture_scores(
        gmm, exact[np.asarray(gmm.posterior(exact, sched, t)).argmax(-1) == 1], sched, t
    )
    assert one_mode["mode_tv"] > 0.45  # all mass on the component of weight 0.5
