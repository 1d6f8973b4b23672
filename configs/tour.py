"""The tour (`experiments/tour.py`, README's first command): solvers on an exact mixture, a toy and a
digits model trained, and steering against search, written up in `runs/tour/report.md`.

    python experiments/tour.py                                   # cpu: about 7 minutes on 2 cores
    python experiments/tour.py --config=configs/tour.py:tiny     # a minute: every part, tiny settings
    python experiments/tour.py --config.steer.particles="(1, 4, 16)" --workdir=runs/tour16

Runs already trained in the workdir (`<workdir>/moons`, `digits`, `digits_classifier`) are reused, so a
second tour only samples and steers; `--config.<part>.train=()` overrides go to experiments/train.py.
"""

import ml_collections

ARGS = ("cpu", "tiny")


def get_config(arg: str = "cpu"):
    if arg not in ARGS:
        raise ValueError(f"configs/tour.py argument must be one of {ARGS}, got {arg!r}")
    tiny = arg == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    # 1. the 8-mode ring's exact denoiser: error against the exact probability-flow ODE from the same noise
    c.solvers = ml_collections.ConfigDict(
        dict(
            names=("euler", "dpmpp_2m", "unipc") if tiny else ("euler", "heun", "ddim", "dpmpp_2m", "unipc"),
            steps=(3, 12) if tiny else (4, 8, 16, 32),
            num=128 if tiny else 512,
            schedule="vp_linear",
            grid="logsnr_uniform(t_min=0.002)",
        )
    )
    # 2. a toy MLP on two moons, scored by the sliced Wasserstein distance to fresh moons
    c.toy = ml_collections.ConfigDict(
        dict(
            train=("--config.optim.total_steps=100", "--config.optim.warmup_steps=10") if tiny else (),
            solvers=("euler", "dpmpp_2m"),
            steps=(4, 16) if tiny else (4, 8, 16, 32),
            num=256 if tiny else 2000,
        )
    )
    # 3. a class-conditional digits UNet and the digits classifier that judges its samples
    model = ("--config.model.args.channels=8", "--config.model.args.num_groups=4") if tiny else (
        "--config.model.args.channels=32",)  # fmt: skip
    steps = 10 if tiny else 600
    schedule = (f"--config.optim.total_steps={steps}", f"--config.optim.warmup_steps={steps // 10}",
                "--config.batch_size=64", "--config.log_every=10" if tiny else "--config.log_every=50")  # fmt: skip
    c.digits = ml_collections.ConfigDict(
        dict(
            train=model
            + schedule
            + (
                "--config.optim.learning_rate=2e-3",
                "--config.ema_decay=0.99",
                "--config.sample.num=16",
                "--config.sample.steps=8",
            ),  # fmt: skip
            classifier_train=schedule if tiny else ("--config.optim.total_steps=300", "--config.batch_size=64"),
            solver="dpmpp_2m",
            steps=8 if tiny else 20,
            num=20 if tiny else 100,
        )
    )
    # 4. steering the unconditional digits model to a class: FK against best-of-N and random search at equal NFE
    c.steer = ml_collections.ConfigDict(
        dict(
            target=3,
            lmbda=4.0,
            particles=(1, 2) if tiny else (1, 2, 4, 8),
            num_conditions=8 if tiny else 32,
            steps=6 if tiny else 20,
            solver="ddim(eta=1.0)",  # FK's and best-of-N's proposal
            search_solver="dpmpp_2m",  # random search's deterministic sampler of each noise
        )
    )
    return c
