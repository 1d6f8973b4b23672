"""Training configs: one file, the variant is the argument.

    python experiments/train.py --config=configs/train.py:moons --workdir=runs/moons
    python experiments/train.py --config=configs/train.py:digits_unet --workdir=runs/digits
    python experiments/train.py --config=configs/train.py:digits_dit --workdir=runs/digits_dit
    python experiments/train.py --config=configs/train.py:shapes_unet --workdir=runs/shapes
    python experiments/train.py --config=configs/train.py:text --workdir=runs/text

Toy 2-D sets (an MLP): moons, swiss_roll, checkerboard, eight_gaussians, rings. Images:
digits_unet and digits_dit (class-conditional 8x8 scikit-learn digits, labels dropped 10% of
the time for classifier-free guidance), shapes_unet (32x32 procedural shapes, conditioned on the
first shape's class). Text (masked diffusion of characters of the pydoc topics, a TokenTransformer):
text (CPU-sized) and text_gpu (one H200). Your own arrays in an .npz file (`np.savez(path, x=x,
y=labels)`): npz for (N, d) points (the toy sets' MLP), npz_images for (N, H, W, C) images in
[-1, 1] (digits_unet's UNet), png_images for a folder of PNGs of one size (class subfolders give
labels; `diffjax.data.load_png_folder`); set --config.data.path, and --config.data.conditional=True
to condition on the integer labels:

    python experiments/train.py --config=configs/train.py:npz --config.data.path=points.npz --workdir=runs/mine

Override any field: --config.optim.total_steps=500 --config.num_devices=1; list them with --print_config.
"""

import ml_collections

TOY = ("moons", "swiss_roll", "checkerboard", "eight_gaussians", "rings")
IMAGES = ("digits_unet", "digits_dit", "shapes_unet")
NPZ = ("npz", "npz_images", "png_images")  # your own data: --config.data.path=points.npz (or a PNG folder)
TEXT = ("text", "text_gpu")


def npz_data():
    """`data` of a user's .npz (`diffjax.data.load_npz`): set `path`; `key` names the samples' array,
    `label_key` the integer labels' (used when `conditional`); samples are trained on as they are."""
    return ml_collections.ConfigDict(dict(name="npz", path="", key="x", label_key="y", conditional=False))


def text_config(c, arg):
    """Masked diffusion of character windows (MDLM's recipe: log-linear schedule, antithetic times, a
    time-agnostic network so that the caching sampler skips calls)."""
    c.task = "masked_diffusion"
    c.schedule = "log_linear"
    c.loss = ml_collections.ConfigDict(dict(t_min=1e-3, antithetic=True))
    gpu = arg == "text_gpu"
    length = 256 if gpu else 64
    # the GPU run's training windows start every 64 characters (1723 disjoint windows of 256 would be
    # seen 900 times each in its 6000 steps)
    c.data = ml_collections.ConfigDict(dict(name="text", length=length, split="train", stride=64 if gpu else None))
    # sin-cos positions: on the CPU run they reach 4.20 bits per character where learned ones reach 4.38
    # (a 2-block network of width 64 after 2000 steps)
    args = dict(hidden_size=512 if gpu else 64, depth=8 if gpu else 3, num_heads=8 if gpu else 4,
                positions="sinusoidal", max_length=length, time_conditioned=False)  # fmt: skip
    c.model = ml_collections.ConfigDict(dict(name="token_transformer", args=args, label_dropout=0.0))
    c.sample = ml_collections.ConfigDict(dict(num=64 if gpu else 16, steps=length, caching=True))
    # the held-out NELBO: passes over every held-out window (standard error about 0.01 bits per token)
    c.evaluation = ml_collections.ConfigDict(dict(passes=16, batch_size=256))
    c.optim.learning_rate = 3e-3 if not gpu else 5e-4
    c.optim.warmup_steps = 100 if not gpu else 1000
    c.optim.weight_decay = 0.0
    if gpu:
        c.compute_dtype = "bfloat16"
        c.batch_size = 256
        c.steps_per_call = 100
        c.optim.total_steps = 6000  # 4.4 min on one H200 at 44 ms per step
        c.ema_decay = 0.999  # a half-life of 700 steps (0.9999's 7000 leaves a short run's EMA near its start)
        c.log_every = 200
        c.checkpoint_every = 2000
    else:
        c.batch_size = 64
        c.steps_per_call = 10
        c.optim.total_steps = 3000
        c.ema_decay = 0.99
        c.log_every = 100
        c.checkpoint_every = 500
    return c


def get_config(arg: str = "moons"):
    if arg not in TOY + IMAGES + TEXT + NPZ:
        raise ValueError(f"configs/train.py argument must be one of {TOY + IMAGES + TEXT + NPZ}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_devices = 0  # 0: every device, as one 'data' mesh axis
    c.compute_dtype = "float32"  # or "bfloat16" (parameters stay float32)
    c.schedule = "vp_cosine"
    # v-prediction: eps-prediction turns into x0 = (x - sigma eps)/alpha, which amplifies the network's
    # error by 1/alpha ~ 120 near vp_cosine's t_max (sampled moons then had outliers at |x| ~ 100).
    c.loss = ml_collections.ConfigDict(dict(prediction="v", weighting="uniform", time_sampler=""))
    c.optim = ml_collections.ConfigDict(
        dict(learning_rate=1e-3, warmup_steps=100, total_steps=2000, weight_decay=0.0, clip_norm=1.0, skip_nonfinite=0)
    )
    c.ema_decay = 0.999
    c.batch_size = 512
    c.steps_per_call = 50
    c.log_every = 100
    c.checkpoint_every = 500
    c.overwrite = False  # True: move a run already in --workdir to <workdir>/previous-<n>, start afresh
    c.keep_checkpoints = 3
    c.sample_every = 0  # 0: only at the end
    c.sample = ml_collections.ConfigDict(dict(solver="dpmpp_2m", grid="logsnr_uniform", steps=30, num=2000))
    if arg in TOY + ("npz",):  # about a minute on two CPU cores; npz: (N, d) points of your own
        c.optim.learning_rate = 2e-3
        c.ema_decay = 0.995
        toy = ml_collections.ConfigDict(dict(name="toy2d", set=arg, conditional=False))
        c.data = npz_data() if arg == "npz" else toy
        c.model = ml_collections.ConfigDict(dict(name="mlp", args=dict(width=256, depth=4), label_dropout=0.0))
        return c
    if arg in TEXT:
        return text_config(c, arg)
    c.batch_size = 128
    # XLA:CPU runs convolutions inside a while loop ~20x slower than outside one (measured: 2 s against
    # 0.09 s per UNet step), so image configs take one step per call; raise it on accelerators.
    c.steps_per_call = 1
    c.log_every = 50
    c.optim.learning_rate = 2e-4
    c.optim.total_steps = 20_000
    c.checkpoint_every = 1000
    c.sample.num = 100
    c.sample.steps = 50
    if arg in ("npz_images", "png_images"):  # your own (N, H, W, C) images in [-1, 1], H, W even: digits_unet's UNet
        c.data = npz_data()
    elif arg.startswith("digits"):
        # trained on the 80% training part of data.train_test_split, as the digits classifier, so that
        # samples are scored against the 20% neither has seen (experiments/sample.py)
        c.data = ml_collections.ConfigDict(dict(name="digits", size=8, conditional=True, split="train"))
    else:
        c.data = ml_collections.ConfigDict(dict(name="shapes", image_size=32, conditional=True))
    if arg == "digits_dit":
        args = dict(patch_size=2, hidden_size=128, depth=6, num_heads=4)
        c.model = ml_collections.ConfigDict(dict(name="dit", args=args, label_dropout=0.1))
    elif arg in ("digits_unet", "npz_images", "png_images"):
        args = dict(channels=64, channel_mults=(1, 2), num_res_blocks=2, attention_resolutions=(4,), num_groups=16)
        c.model = ml_collections.ConfigDict(dict(name="unet", args=args, label_dropout=0.1))
    else:
        args = dict(channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(8,), num_groups=16)
        c.model = ml_collections.ConfigDict(dict(name="unet", args=args, label_dropout=0.1))
    return c
