"""Search over noises and paths, verifiers and golden seeds, against exact answers."""

import hashlib
import os
import subprocess
import sys
import time

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax as dj
from diffjax.steering import rewards, search, seeds, verifiers
from helpers import FAST_COMPILE_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST = rewards.linear([1.0, 0.0])
WEIGHTS, MEANS, SCALES = [0.6, 0.4], [[-1.0, 0.5], [1.5, -0.5]], [[0.4, 0.3], [0.3, 0.5]]


@pytest.mark.parametrize("n,expected,sd", [(2, 0.5642, 0.8256), (4, 1.0294, 0.7012), (8, 1.4236, 0.6052)])
def test_random_search_on_the_identity_sampler_is_the_expected_max_of_normals(n, expected, sd):
    # x0 = z and r(x) = x_1: the best of n candidates is the max of n standard normals, whose mean
    # is tabulated; 4000 conditions put the average within 5 standard errors (sd of the max / sqrt(4000))
    result = dj.steering.random_search(search.identity_generator, FIRST, jax.random.key(n), (4000, 2),
                                       num_candidates=n)  # fmt: skip
    assert abs(float(result.score.mean()) - expected) < 5 * sd / np.sqrt(4000)
    np.testing.assert_array_equal(result.x, result.noise)  # the chosen noise reproduces the sample
    assert int(result.nfe) == 0


def test_rounds_trace_the_best_so_far_and_the_nfe():
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 6, t_min=1e-3)
    generator = search.ode_generator(dj.solvers.euler(), gmm.denoiser(sched), ts)
    result = dj.steering.random_search(generator, FIRST, jax.random.key(0), (16, 2), num_candidates=3, rounds=4)
    trace = np.asarray(result.trace)
    assert trace.shape == (4, 16) and np.all(np.diff(trace, axis=0) >= 0)
    assert int(result.nfe) == 4 * 3 * 6
    # the chosen noise regenerates the sample: to the last bits the compiled search and a separate
    # call may round differently (the generator's parameters are data, not constants, so XLA fuses
    # its arithmetic differently in the two programs), hence 1e-14 rather than bit equality
    again, _ = generator.fn(result.noise, None)
    np.testing.assert_allclose(again, result.x, rtol=0, atol=1e-14)


def test_best_reward_under_the_exact_pf_ode_has_cdf_f_to_the_n():
    # the exact probability-flow ODE of a mixture is a deterministic generator; the best quadratic
    # reward of 4 candidates has CDF F(s)^4 with F the reward's CDF under the generator (estimated from
    # 20000 single draws: its error ~0.01 is well below the KS test's resolution at 400 draws)
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    t_end = 1e-3
    reward = rewards.quadratic([0.5, 0.0], 1.0)
    pf = search.Generator(lambda z, cond: (gmm.pf_ode(sched.sigma(1.0) * z, sched, 1.0, t_end, rtol=1e-6,
                                                      atol=1e-6), jnp.int32(0)))  # fmt: skip
    single, _ = pf.fn(jax.random.normal(jax.random.key(1), (20_000, 2)), None)
    r_single = np.sort(np.asarray(reward(single)))
    best = dj.steering.random_search(pf, reward, jax.random.key(2), (400, 2), num_candidates=4)
    cdf = lambda s: (np.searchsorted(r_single, s, side="right") / r_single.size) ** 4  # noqa: E731
    assert stats.kstest(np.asarray(best.score), cdf).pvalue > 1e-3
    plain = stats.kstest(np.asarray(best.score), lambda s: np.searchsorted(r_single, s, side="right") / r_single.size)
    assert plain.pvalue < 1e-6  # best-of-4 is not a plain draw


def test_zero_order_neighbours_keep_the_norm_and_cosine_and_the_best_never_drops():
    pivot = jax.random.normal(jax.random.key(0), (3, 4, 5))
    n = search.neighbours(jax.random.key(1), pivot, 6, 0.95)
    p, q = np.asarray(pivot).reshape(3, 1, -1), np.asarray(n).reshape(3, 6, -1)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), np.linalg.norm(p, axis=-1).repeat(6, 1), rtol=1e-6)
    cos = (q * p).sum(-1) / (np.linalg.norm(q, axis=-1) * np.linalg.norm(p, axis=-1))
    np.testing.assert_allclose(cos, 0.95, atol=1e-6)

    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 5, t_min=1e-3)
    generator = search.ode_generator(dj.solvers.euler(), gmm.denoiser(sched), ts)
    result = dj.steering.zero_order_search(generator, FIRST, jax.random.key(2), (32, 2), rounds=6, num_neighbors=3,
                                           cosine=0.9)  # fmt: skip
    trace = np.asarray(result.trace)
    assert np.all(np.diff(trace, axis=0) >= 0) and np.any(np.diff(trace, axis=0) > 0)
    assert int(result.nfe) == 6 * (3 + 1) * 5
    again, _ = generator.fn(result.noise, None)
    np.testing.assert_allclose(again, result.x, rtol=0, atol=1e-14)  # to rounding, as above
    np.testing.assert_allclose(FIRST(result.x), result.score)


def test_path_search_with_a_constant_verifier_samples_like_plain_sampling():
    # each branch is noised forward exactly and brought back by the exact reverse kernel, so every
    # kept path is an exact draw of p at the grid's end whatever the verifier keeps; with a constant
    # verifier the outputs of 2000 conditions match it (mean and mode weights within 5 SE)
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 10, t_min=1e-3)
    args = (gmm.exact_solver(sched), gmm.denoiser(sched), ts, jax.random.key(3))
    kwargs = dict(num_paths=2, branches=2, start=4, forward=1, backward=3)
    result = dj.steering.path_search(*args, verifiers.constant(), (2000, 2), **kwargs)
    x = np.asarray(result.x)
    exact = np.asarray(gmm.sample(jax.random.key(4), 200_000, sched, ts[-1]))
    np.testing.assert_array_less(np.abs(x.mean(0) - exact.mean(0)), 5 * exact.std(0) / np.sqrt(len(x)))
    upper = np.mean(np.asarray(gmm.posterior(jnp.asarray(x), sched, ts[-1]))[:, 1] > 0.5)
    assert abs(upper - 0.4) < 5 * np.sqrt(0.24 / len(x))
    steered = dj.steering.path_search(*args, FIRST, (2000, 2), **kwargs)
    assert float(steered.score.mean()) > x[:, 0].mean() + 0.3  # a real verifier moves the outputs
    assert result.choices.shape == (3, 2000, 2)  # phases (3, 6), (5, 8), (7, 10)

    ddim = (dj.solvers.ddim(), *args[1:])
    counted = dj.steering.path_search(*ddim, FIRST, (4, 2), **kwargs)
    # 2 paths x 4 steps, then per phase 4 branches x 3 steps (+ 4 x0-hat scorings but at the end)
    assert int(counted.nfe) == 2 * 4 + (4 * 3 + 4) * 2 + 4 * 3


def test_noise_search_spends_c_evaluations_per_step_and_replays_exactly():
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 8, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 512, sched, ts[0])
    args = (gmm.denoiser(sched), ts, jax.random.key(1), x_T, FIRST)
    result = dj.steering.noise_search(*args, num_candidates=4)
    assert int(result.nfe) == 1 + 8 * 4 and result.choices.shape == (8, 512)
    replay = dj.steering.noise_search(*args, num_candidates=4, choices=result.choices)
    np.testing.assert_array_equal(replay.x, result.x)
    plain = dj.steering.noise_search(*args, num_candidates=1)  # one candidate: DDIM(eta=1) itself
    ddim, _ = dj.sample(dj.solvers.ddim(eta=1.0), gmm.denoiser(sched), ts, jax.random.key(9), x_T)
    assert abs(float(plain.x[:, 0].mean()) - float(ddim[:, 0].mean())) < 0.15
    assert float(result.x[:, 0].mean()) > float(plain.x[:, 0].mean()) + 0.3


def test_golden_seed_ranking_is_the_argmax_over_seeds_and_round_trips(tmp_path):
    # identity generator and r = a.z: a seed's score is a.z(seed) for every condition, so the ranking
    # is the argsort of a.z over the bank, computed directly from jax.random.key(seed)
    bank_seeds = np.arange(100, 164)
    bank = dj.steering.golden_seeds(search.identity_generator, FIRST, bank_seeds, (2,), cond=jnp.zeros((3, 1)),
                                    top=10)  # fmt: skip
    direct = np.array([float(jax.random.normal(jax.random.key(int(s)), (2,), jnp.float32)[0]) for s in bank_seeds])
    assert bank.seeds == tuple(int(s) for s in bank_seeds[np.argsort(-direct)[:10]])
    np.testing.assert_allclose(bank.scores, np.sort(direct)[::-1][:10], rtol=1e-6)
    bank.save(tmp_path / "bank.json")
    assert seeds.SeedBank.load(tmp_path / "bank.json") == bank
    # the bank feeds random search: its best seed wins for every condition
    result = dj.steering.random_search(search.identity_generator, FIRST, jax.random.key(0), (5, 2),
                                       num_candidates=4, seed_bank=bank)  # fmt: skip
    np.testing.assert_array_equal(result.noise, np.repeat(bank.noise(1, (2,)), 5, axis=0))
    # diverse mode: every kept pair of seeds is less similar than the threshold
    diverse = dj.steering.golden_seeds(search.identity_generator, FIRST, bank_seeds, (2,), max_similarity=0.5)
    unit = np.asarray(seeds.seed_noise(np.asarray(diverse.seeds), (2,)))
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    similarity = unit @ unit.T
    assert len(diverse.seeds) > 1 and np.all(similarity[np.triu_indices(len(unit), 1)] < 0.5)
    assert diverse.seeds[0] == bank.seeds[0]


def test_a_seed_gives_the_same_bits_under_jit_across_runs_and_devices():
    noise = np.asarray(seeds.seed_noise(np.array([7, 11, 2**31]), (4, 4, 3)))
    eager = np.stack([np.asarray(jax.random.normal(jax.random.key(s), (4, 4, 3), jnp.float32)) for s in (7, 11, 2**31)])
    np.testing.assert_array_equal(noise, eager)
    code = (
        "import hashlib, jax, numpy as np\n"
        "from jax.sharding import NamedSharding, PartitionSpec as P\n"
        "from diffjax.steering import seeds\n"
        "mesh = jax.make_mesh((8,), ('data',))\n"
        "ids = jax.device_put(np.arange(8, dtype=np.uint32) + 7, NamedSharding(mesh, P('data')))\n"
        "z = seeds.seed_noise(ids, (4, 4, 3))\n"
        "print(len(z.sharding.device_set), hashlib.sha256(np.asarray(z).tobytes()).hexdigest())\n"
    )
    devices = f"{FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": devices}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    devices, digest = out.stdout.split()
    local = np.asarray(seeds.seed_noise(np.arange(8) + 7, (4, 4, 3)), np.float32)
    assert devices == "8" and digest == hashlib.sha256(local.tobytes()).hexdigest()


def test_ensembles_and_feature_similarity_score_per_sample():
    reference = jax.random.normal(jax.random.key(0), (1000, 2))
    second = rewards.linear([0.0, 1.0])
    ranked = verifiers.ensemble([FIRST, second], reference, mode="rank")
    x = jnp.array([[0.0, 0.0], [3.0, 3.0], [-3.0, 3.0]])
    expected = [(np.mean(np.asarray(reference)[:, 0] < a) + np.mean(np.asarray(reference)[:, 1] < b)) / 2 for a, b in x]
    np.testing.assert_allclose(ranked(x), expected, atol=1e-12)
    np.testing.assert_allclose(ranked(x[1:]), ranked(x)[1:])  # a sample's score ignores its batch
    z = verifiers.ensemble([FIRST], reference, mode="zscore")(x)
    np.testing.assert_allclose(z, (np.asarray(x)[:, 0] - reference[:, 0].mean()) / reference[:, 0].std(), rtol=1e-6)
    similar = verifiers.feature_similarity(lambda x: x, target=[1.0, 1.0])
    np.testing.assert_allclose(similar(jnp.array([[2.0, 2.0], [1.0, -1.0]])), [1.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="mode"):
        verifiers.ensemble([FIRST], reference, mode="borda")


def test_bad_search_arguments_raise_before_tracing():
    gen = search.identity_generator
    with pytest.raises(ValueError, match="num_candidates"):
        dj.steering.random_search(gen, FIRST, jax.random.key(0), (2, 2), num_candidates=0)
    with pytest.raises(ValueError, match="cosine"):
        dj.steering.zero_order_search(gen, FIRST, jax.random.key(0), (2, 2), rounds=1, cosine=1.5)
    with pytest.raises(ValueError, match="backward"):
        gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
        dj.steering.path_search(dj.solvers.ddim(), gmm.denoiser(sched), jnp.linspace(1, 0.01, 6), jax.random.key(0),
                                FIRST, (2, 2), num_paths=1, branches=1, start=2, forward=2, backward=2)  # fmt: skip
    with pytest.raises(ValueError, match="seeds"):
        seeds.rank_seeds([1, 1], [0.0, 1.0])
    with pytest.raises(ValueError, match="leading axis"):
        seeds.score_seeds(gen, FIRST, [1, 2], (2,), cond={"a": jnp.zeros(3), "b": jnp.zeros(4)})
    with pytest.raises(ValueError, match="seed_bank"):
        dj.steering.random_search(gen, FIRST, jax.random.key(0), (2, 2), num_candidates=4,
                                  seed_bank=seeds.SeedBank((1, 2), (0.0, 0.0)))  # fmt: skip


S = dj.solvers
STOCHASTIC = {
    "ddim": S.ddim(eta=1.0),
    "ddpm": S.ddpm(),
    "euler_ancestral": S.euler_ancestral(),
    "dpmpp_2m_sde": S.dpmpp_2m_sde(),
    "euler_maruyama": S.euler_maruyama(),
    "heun": S.heun(s_churn=20.0),
    "predictor_corrector": S.predictor_corrector(S.ddpm(), snr=0.05),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_noise_search_with_every_stochastic_solver_replays_exactly(name):
    # any stochastic solver: its state is fanned out to the C candidates, the step's first network
    # call reuses the chosen candidate's scoring prediction where it is the same call, and replaying
    # `choices` with the same key reproduces the result bit for bit
    solver = STOCHASTIC[name]
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 6, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 64, sched, ts[0])
    args = (gmm.denoiser(sched), ts, jax.random.key(1), x_T, FIRST)
    result = dj.steering.noise_search(*args, num_candidates=3, solver=solver)
    replay = dj.steering.noise_search(*args, num_candidates=3, solver=solver, choices=result.choices)
    np.testing.assert_array_equal(replay.x, result.x)
    np.testing.assert_array_equal(replay.trace, result.trace)
    if isinstance(solver, S.GaussianSolver):  # one evaluation per step, reused: C scorings per step
        assert int(result.nfe) == 1 + 6 * 3
    plain = dj.steering.noise_search(*args, num_candidates=1, solver=solver)
    assert float(result.score.mean()) > float(plain.score.mean())


def test_noise_search_needs_a_stochastic_solver():
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 4, t_min=1e-3)
    with pytest.raises(ValueError, match="stochastic"):
        dj.steering.noise_search(gmm.denoiser(sched), ts, jax.random.key(1), jnp.zeros((2, 2)), FIRST,
                                 num_candidates=2, solver=S.dpmpp_2m())  # fmt: skip


def test_a_generator_and_a_verifier_with_new_parameters_do_not_recompile():
    # generators and verifiers are values: a new mixture (the denoiser's parameters) and a new
    # classifier's weights reuse the compiled search, and change its result
    sched = dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 4, t_min=1e-3)
    net = flax.linen.Dense(2)
    before = search._random_search._cache_size()
    results = []
    for seed, shift in ((0, 0.0), (1, 1.0)):
        gmm = dj.data.GaussianMixture(WEIGHTS, np.asarray(MEANS) + shift, SCALES)
        generator = search.ode_generator(S.euler(), gmm.denoiser(sched), ts)
        verifier = rewards.classifier_reward(net, net.init(jax.random.key(seed), jnp.zeros((1, 2))), target=0)
        results.append(dj.steering.random_search(generator, verifier, jax.random.key(2), (8, 2), num_candidates=2))
    assert search._random_search._cache_size() == before + 1
    assert not np.allclose(results[0].x, results[1].x)


SLOW_SCORING = """
import sys, time, jax, jax.numpy as jnp, numpy as np
from diffjax.steering import search, seeds
calls = []
def slow_first(x, cond):  # the verifier r(x) = x_1, a second per chunk: time to kill the run between chunks
    calls.append(None)
    time.sleep(1.0)
    return x[:, 0]
scores, samples = seeds.score_seeds(search.identity_generator, slow_first, np.arange(12), (2,),
                                    cond=jnp.zeros((2, 1)), chunk=3, progress=sys.argv[1])
np.save(sys.argv[2], np.asarray(scores))
print("CHUNKS SCORED", len(calls))
"""


def test_seed_scoring_killed_between_chunks_continues_from_its_progress_file(tmp_path):
    """kill -9 once the first chunk is saved; the rerun scores only the chunks left and ends with the
    scores of an uninterrupted run, bit for bit (the identity generator: seed s's score is z(s)_1)."""
    progress, out = tmp_path / "progress.npz", tmp_path / "scores.npy"
    cmd = [sys.executable, "-c", SLOW_SCORING, str(progress), str(out)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}
    victim = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not progress.exists():
        assert victim.poll() is None, victim.communicate()[1].decode()[-3000:]
        time.sleep(0.01)
    victim.kill()
    victim.wait()
    with np.load(progress) as saved:
        done = len(saved["chunk_sizes"])
    assert 1 <= done < 4 and not out.exists()
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"CHUNKS SCORED {4 - done}" in rerun.stdout
    direct = np.array([float(jax.random.normal(jax.random.key(s), (2,), jnp.float32)[0]) for s in range(12)])
    np.testing.assert_array_equal(np.load(out), direct)


def test_a_progress_file_of_another_run_or_damaged_is_refused_naming_it(tmp_path):
    progress = tmp_path / "progress.npz"
    kwargs = dict(chunk=2, progress=progress)
    reference, _ = seeds.score_seeds(search.identity_generator, FIRST, np.arange(6), (2,), **kwargs)
    again, _ = seeds.score_seeds(search.identity_generator, FIRST, np.arange(6), (2,), **kwargs)  # all read back
    np.testing.assert_array_equal(again, reference)
    for other in (dict(seeds=np.arange(1, 7)), dict(verifier=rewards.linear([0.0, 1.0])), dict(shape=(3,))):
        args = {"seeds": np.arange(6), "verifier": FIRST, "shape": (2,), **other}
        with pytest.raises(ValueError, match=f"progress file {progress} belongs to another scoring run"):
            seeds.score_seeds(search.identity_generator, args["verifier"], args["seeds"], args["shape"], **kwargs)
    progress.write_bytes(progress.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"progress file {progress} cannot be read"):
        seeds.score_seeds(search.identity_generator, FIRST, np.arange(6), (2,), **kwargs)
    assert len(progress.read_bytes()) == 100  # a damaged file is left as it was
