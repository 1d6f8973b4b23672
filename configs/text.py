"""Text experiments (`experiments/text.py`) on a trained character-level masked diffusion model:
samplers (NFE, n-gram perplexity of samples, diversity) and steering (FK vs best-of-N vs random
search at equal NFE, for an n-gram "perplexity" reward, a word-presence reward and a code-vs-prose
attribute classifier's log-probability).

    python experiments/train.py --config=configs/train.py:text --workdir=runs/text
    python experiments/text.py --config=configs/text.py:cpu --config.run=runs/text --workdir=runs/text_eval

cpu: small batches for a 2-core CPU; gpu: the sizes of BENCHMARKS.md (configs/train.py:text_gpu).
"""

import ml_collections

ARGS = ("cpu", "gpu")


def get_config(arg: str = "cpu"):
    if arg not in ARGS:
        raise ValueError(f"configs/text.py argument must be one of {ARGS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.run = ""  # the trained text model's workdir (required)
    c.seed = 0
    c.num_samples = 32 if arg == "cpu" else 256  # per sampler
    c.sampler_steps = (16, 64) if arg == "cpu" else (64, 256)  # ancestral (cached and not) on these grids
    c.first_hitting = True  # also the first-hitting sampler (L calls)
    c.rewards = ("ngram", "words", "attribute")
    c.words = ("the", "function")  # the word-presence reward: +1 per word present
    c.lmbda = 10.0  # FK's tilt on the reward (FK's text experiments use 10)
    c.particles = 4 if arg == "cpu" else 16  # K: FK particles, best-of-N's N, random search's candidates
    c.num_conditions = 8 if arg == "cpu" else 64  # independent outputs per method
    c.steer_steps = 16 if arg == "cpu" else 64  # the sampling grid of every steering method
    c.methods = ("unsteered", "fk", "best_of_n", "random_search")
    return c
