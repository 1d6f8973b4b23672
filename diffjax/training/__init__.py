"""Training: denoising losses, the classifiers' cross-entropy, the laws of the training time, the
optimizer and EMA, the jitted step (k steps per call) with label dropout, the train state and its
checkpoints; config -> objects (`build`), the loop in memory (`fit`) and finished runs read back
from their workdir (`load_run`, `draw_samples`)."""

from diffjax.training import build, checkpoints, classifier, loop, losses, optim, runs, state, step, time_sampling
from diffjax.training.classifier import ClassifierAux, ClassifierLoss, classifier_loss
from diffjax.training.loop import fit
from diffjax.training.losses import DiffusionLoss, LossAux, diffusion_loss
from diffjax.training.runs import Run, classifier_apply, draw_samples, load_run
from diffjax.training.state import TrainState, init_state
from diffjax.training.step import make_train_step, scan_steps, train_apply
from diffjax.training.time_sampling import TimeSampler

__all__ = [
    "ClassifierAux",
    "ClassifierLoss",
    "DiffusionLoss",
    "LossAux",
    "Run",
    "TimeSampler",
    "TrainState",
    "build",
    "checkpoints",
    "classifier",
    "classifier_apply",
    "classifier_loss",
    "diffusion_loss",
    "draw_samples",
    "fit",
    "init_state",
    "load_run",
    "loop",
    "losses",
    "make_train_step",
    "optim",
    "runs",
    "scan_steps",
    "state",
    "step",
    "time_sampling",
    "train_apply",
]
