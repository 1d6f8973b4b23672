r"""Sample and steer a trained character-level masked diffusion model (a `configs/train.py:text` run).

The run's held-out NELBO in bits per character (from its final.json) and two tables, printed and
written to results.json with the samples (samples.txt):

- samplers: ancestral on each grid of `config.sampler_steps` (with and without caching: the same
  samples, fewer calls), and the first-hitting sampler: network calls per sequence, the bigram
  perplexity of the samples (a bigram fit on the run's training windows; the held-out text's own
  is printed as the reference), distinct 4-grams and the mean pairwise Hamming distance;
- steering, per reward (the bigram's per-character log-likelihood, "ngram"; the number of
  `config.words` present, "words"; log p(code | x) of a bag-of-bigrams classifier of code vs prose
  trained here on the pydoc text, "attribute"): unsteered sampling, FK steering (K particles, one resampled
  output, reward on the argmax prediction), best-of-N (N = K independent samples) and random search
  over the sampler's noise (K candidates), at equal NFE (K x steps): mean reward, hit rate (ngram:
  at least the held-out text's mean; words: all present; attribute: p(code | x) > 1/2), diversity,
  NFE per output.

    python experiments/text.py --config=configs/text.py:cpu --config.run=runs/text --workdir=runs/text_eval
"""

import json
import os
import time

import cli
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

import diffjax as dj
from diffjax import discrete as dd
from diffjax.data import text

_CONFIG = cli.define_config("configs/text.py", "text experiment config")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write results.json and samples.txt", required=True)

METHODS = ("unsteered", "fk", "best_of_n", "random_search")
REWARDS = ("ngram", "words", "attribute")


def timed(fn, *args):
    """(fn(*args), seconds of a second call): the first call compiles."""
    jax.block_until_ready(fn(*args))
    tick = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - tick


def sampler_rows(den, length, config, bigram, key):
    rows, samples = [], {}
    n = config.num_samples
    z = dd.all_masked(n, length, text.VOCAB_SIZE)
    for steps in config.sampler_steps:
        ts = dd.uniform_grid(steps)
        for caching in (False, True):
            (x, info), seconds = timed(dd.sample, dd.ancestral(caching=caching), den, ts, key, z)
            samples[f"ancestral_{steps}{'_cached' if caching else ''}"] = x
            rows.append(("ancestral" + (" cached" if caching else ""), steps, int(info.nfe), x, seconds))
    if config.first_hitting:
        (x, info), seconds = timed(dd.sample_first_hitting, dd.first_hitting(), den, key, z)
        samples["first_hitting"] = x
        rows.append(("first hitting", length, int(info.nfe), x, seconds))
    table = []
    for name, steps, nfe, x, seconds in rows:
        table.append(dict(sampler=name, steps=steps, nfe=nfe, bigram_perplexity=float(bigram.perplexity(x)),
                          distinct_4=dd.diversity.distinct_ngrams(x, 4), hamming=dd.diversity.mean_hamming(x),
                          seconds=seconds))  # fmt: skip
    return table, samples


def steer(method, den, reward, ts, key, config, length):
    """(B, L) outputs of one method and the network calls each cost."""
    b, k = config.num_conditions, config.particles
    solver = dd.ancestral()
    if method == "random_search":
        gen = dd.generator(solver, den, ts, noise_removal=False)  # the grid ends at t = 0: no mask is left
        result = dj.steering.random_search(gen, reward, key, (b, ts.shape[0] - 1, length), num_candidates=k)
        return result.x, int(result.nfe)
    key_run, key_pick = jax.random.split(key)
    if method == "unsteered":
        x, info = dd.sample(solver, den, ts, key_run, dd.all_masked(b, length, text.VOCAB_SIZE), noise_removal=False)
        return x, int(info.nfe)
    x_T = jnp.full((b, k, length), text.VOCAB_SIZE, jnp.int32)
    if method == "fk":
        p = dj.steering.fk_steer(solver, den, ts, key_run, x_T, reward, lmbda=config.lmbda)
        return dj.steering.resampled(key_pick, p), int(p.nfe) * k
    p = dj.steering.importance_sample(solver, den, ts, key_run, x_T, reward, lmbda=config.lmbda)
    return dj.steering.best_of(p), int(p.nfe) * k


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config, workdir = _CONFIG.value, _WORKDIR.value
    for m in config.methods:
        dj._checks.one_of("config.methods", m, METHODS)
    for r in config.rewards:
        dj._checks.one_of("config.rewards", r, REWARDS)
    for s in config.sampler_steps:
        dj._checks.positive_int("config.sampler_steps", s)
    for field in ("num_samples", "particles", "num_conditions", "steer_steps"):
        dj._checks.positive_int(f"config.{field}", config[field])
    if config.num_samples < 2:
        raise ValueError(f"config.num_samples must be at least 2 (diversity compares pairs), got {config.num_samples}")
    if not config.run:
        raise ValueError(
            "config.run must name a trained text run (experiments/train.py --config=configs/train.py:text)"
        )
    run = dj.training.load_run(config.run, field="config.run")
    if run.config.get("task") != "masked_diffusion":
        raise ValueError(
            f"config.run={config.run!r} is not a masked-diffusion run (its task is {run.config.get('task')!r})"
        )
    den, length = run.denoiser, run.event_shape[0]
    words = dd.rewards.word_presence(tuple(config.words), text.encode)
    bigram = dd.ngram.fit(np.asarray(run.data.train_x), vocab_size=text.VOCAB_SIZE, order=2)
    held_out = np.asarray(run.data.evaluation[0])
    per_char = dd.ngram_reward(bigram, per_token=True)
    reference = dict(held_out_bigram_perplexity=float(bigram.perplexity(held_out)),
                     held_out_log_likelihood=float(jnp.mean(per_char(held_out))))  # fmt: skip
    final = os.path.join(config.run, "final.json")  # train.py's held-out NELBO (bits per character)
    if os.path.exists(final):
        with open(final) as f:
            trained = json.load(f)
        bound = ("held_out_bits_per_token", "held_out_bits_per_token_se", "unigram_bits_per_token")
        reference.update({k: trained[k] for k in bound if k in trained})
    if "held_out_bits_per_token" in reference:
        print(f"model: held-out NELBO {reference['held_out_bits_per_token']:.3f} +- "
              f"{reference['held_out_bits_per_token_se']:.3f} bits per character (unigram "
              f"{reference['unigram_bits_per_token']:.3f}), step {run.step}\n")  # fmt: skip
    key_sample, key_steer = jax.random.split(jax.random.key(config.seed))

    samplers, samples = sampler_rows(den, length, config, bigram, key_sample)
    print(f"samplers ({config.num_samples} sequences of {length}; held-out text: bigram perplexity "
          f"{reference['held_out_bigram_perplexity']:.2f})")  # fmt: skip
    print(f"{'sampler':<18}{'steps':>6}{'NFE':>6}{'bigram ppl':>12}{'distinct-4':>12}{'hamming':>9}{'s':>8}")
    for r in samplers:
        print(f"{r['sampler']:<18}{r['steps']:>6}{r['nfe']:>6}{r['bigram_perplexity']:>12.2f}{r['distinct_4']:>12.3f}"
              f"{r['hamming']:>9.3f}{r['seconds']:>8.2f}")  # fmt: skip

    rewards = {"ngram": per_char, "words": words}
    hits = {"ngram": lambda x: rewards["ngram"](x) >= reference["held_out_log_likelihood"],
            "words": lambda x: jnp.all(words.occurs(x), axis=-1)}  # fmt: skip
    if "attribute" in config.rewards:
        fit = dd.text_attribute_classifier(length)
        reference.update(attribute_accuracy=fit.accuracy, attribute_base_rate=fit.base_rate)
        rewards["attribute"] = dd.attribute_reward(fit.classifier)
        hits["attribute"] = lambda x: fit.classifier.logits(x) > 0
    ts = dd.uniform_grid(config.steer_steps, t_end=0.0)
    steering = []
    for name in config.rewards:
        for method in config.methods:
            x, nfe = steer(method, den, rewards[name], ts, key_steer, config, length)
            samples[f"{name}_{method}"] = x
            steering.append(dict(reward=name, method=method, K=1 if method == "unsteered" else config.particles,
                                 mean_reward=float(jnp.mean(rewards[name](x))), hit_rate=float(jnp.mean(hits[name](x))),
                                 hamming=dd.diversity.mean_hamming(x), nfe=nfe))  # fmt: skip
    print(f"\nsteering ({config.num_conditions} outputs per method, {config.steer_steps} steps, lambda {config.lmbda})")
    print(f"{'reward':<10}{'method':<15}{'K':>4}{'reward':>10}{'hit rate':>10}{'hamming':>9}{'NFE':>7}")
    for r in steering:
        print(f"{r['reward']:<10}{r['method']:<15}{r['K']:>4}{r['mean_reward']:>10.3f}{r['hit_rate']:>10.3f}"
              f"{r['hamming']:>9.3f}{r['nfe']:>7}")  # fmt: skip

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(dict(reference=reference, samplers=samplers, steering=steering, run=config.run), f, indent=1)
    with open(os.path.join(workdir, "samples.txt"), "w") as f:
        for name, x in samples.items():
            f.write(f"== {name}\n" + "\n--\n".join(text.decode(np.asarray(x[:4]))) + "\n\n")
    print(f"\nwrote {workdir}/results.json and samples.txt")


if __name__ == "__main__":
    cli.run(main)
