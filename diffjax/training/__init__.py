"""Training: denoising losses, the classifiers' cross-entropy, the laws of the training time, the
optimizer and EMA, the jitted step (k steps per call), the train state and its checkpoints."""

from diffjax.training import checkpoints, classifier, losses, optim, state, step, time_sampling
from diffjax.training.classifier import ClassifierAux, ClassifierLoss, classifier_loss
from diffjax.training.losses import DiffusionLoss, LossAux, diffusion_loss
from diffjax.training.state import TrainState, init_state
from diffjax.training.step import make_train_step, scan_steps
from diffjax.training.time_sampling import TimeSampler

__all__ = [
    "ClassifierAux",
    "ClassifierLoss",
    "classifier",
    "classifier_loss",
    "DiffusionLoss",
    "LossAux",
    "TimeSampler",
    "TrainState",
    "checkpoints",
    "diffusion_loss",
    "init_state",
    "losses",
    "make_train_step",
    "optim",
    "scan_steps",
    "state",
    "step",
    "time_sampling",
]
