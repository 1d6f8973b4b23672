"""Classifier configs for `experiments/train.py`: the feature extractors of digits-FID / shapes-KID,
the judges of class-conditional samples, and (noisy) the noise-aware classifiers of guidance.

    python experiments/train.py --config=configs/classifier.py:digits --workdir=runs/digits_classifier

digits: clean 8x8 digits, trained on the 80% training part of `data.train_test_split` (seed 0) and
scored on the other 20% (`final.json`: held_out_accuracy). digits_noisy: the same on x_t at
uniform times of the vp_cosine schedule, time-conditioned. shapes: 32x32 procedural shapes
(the first shape's class), scored on 2000 scenes drawn from a key training never uses.
"""

import ml_collections

ARGS = ("digits", "digits_noisy", "shapes")


def get_config(arg: str = "digits"):
    if arg not in ARGS:
        raise ValueError(f"configs/classifier.py argument must be one of {ARGS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.task = "classifier"
    c.noisy = arg == "digits_noisy"
    c.seed = 0
    c.num_devices = 0
    c.compute_dtype = "float32"
    c.schedule = "vp_cosine"  # only for noisy training
    c.optim = ml_collections.ConfigDict(
        dict(learning_rate=1e-3, warmup_steps=100, total_steps=1500, weight_decay=1e-4, clip_norm=1.0, skip_nonfinite=0)
    )
    c.ema_decay = 0.99
    c.batch_size = 128
    c.steps_per_call = 1  # XLA:CPU runs convolutions in loops slowly; raise it on accelerators
    c.log_every = 50
    c.checkpoint_every = 500
    c.overwrite = False  # True: move a run already in --workdir to <workdir>/previous-<n>, start afresh
    c.keep_checkpoints = 2
    args = dict(channels=32, channel_mults=(1, 2), num_res_blocks=1, num_groups=8, feature_dim=64, dropout=0.1)
    c.model = ml_collections.ConfigDict(dict(name="classifier", args=args))
    if arg.startswith("digits"):
        c.data = ml_collections.ConfigDict(dict(name="digits", size=8, conditional=True, split="train"))
    else:
        c.data = ml_collections.ConfigDict(dict(name="shapes", image_size=32, conditional=True))
        c.model.args.channel_mults = (1, 2, 2)
    if c.noisy:
        c.optim.total_steps = 4000
    return c
