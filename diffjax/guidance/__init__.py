"""Guidance and inverse problems: one diffusion prior, many tasks, without retraining.

- `cfg`: classifier-free guidance (`classifier_free`, with guidance rescale and a guidance
  interval) and CFG++ (`classifier_free_pp`), as guided denoisers;
- `classifier`: classifier guidance with a noise-aware classifier (`classifier_guidance`);
- `operators`: measurement operators y = A x + sigma_y n (masks, downsampling, blur, any matrix,
  linear or nonlinear function) with their SVDs and pseudo-inverses;
- inverse-problem solvers, each taking any denoiser and schedule: `dps` and `steered` (solver
  wrappers: a gradient step on a loss of x0-hat after each step of any solver), `pigdm` (a guided
  denoiser for any solver), `ddrm` and `red_diff` (solvers for `dj.sample`), `repaint` (a sampler
  with resampling jumps);
- `problems`: the tasks and methods of `experiments/invert.py` by name.

The builders are exported here (`dj.guidance.ddrm(op, y, sigma_y)`); their modules, with the
value classes and helpers, are `diffjax.guidance.<name>` (e.g. `from diffjax.guidance.dps import
measurement_loss`).
"""

from diffjax.guidance import cfg, classifier, operators, problems
from diffjax.guidance.cfg import ClassifierFree, ClassifierFreePP, classifier_free, classifier_free_pp
from diffjax.guidance.classifier import ClassifierGuided, classifier_guidance
from diffjax.guidance.ddrm import DDRM, ddrm
from diffjax.guidance.dps import DPS, dps, measurement_loss, steered
from diffjax.guidance.operators import Operator, measure
from diffjax.guidance.pigdm import PiGDM, pigdm
from diffjax.guidance.reddiff import RedDiff, red_diff
from diffjax.guidance.repaint import repaint, repaint_schedule

__all__ = [
    "DDRM",
    "DPS",
    "ClassifierFree",
    "ClassifierFreePP",
    "ClassifierGuided",
    "Operator",
    "PiGDM",
    "RedDiff",
    "cfg",
    "classifier",
    "classifier_free",
    "classifier_free_pp",
    "classifier_guidance",
    "ddrm",
    "dps",
    "measure",
    "measurement_loss",
    "operators",
    "pigdm",
    "problems",
    "red_diff",
    "repaint",
    "repaint_schedule",
    "steered",
]
