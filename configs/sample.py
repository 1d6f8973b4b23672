"""Sample a trained run and score the samples (`experiments/sample.py`).

    python experiments/train.py --config=configs/train.py:digits_unet --workdir=runs/digits
    python experiments/train.py --config=configs/classifier.py:digits --workdir=runs/digits_classifier
    python experiments/sample.py --config=configs/sample.py --config.run=runs/digits \
        --config.classifier_run=runs/digits_classifier --workdir=runs/digits/eval

With a classifier run (a clean `Classifier` trained on the same kind of images) the samples get a
feature-space FID and KID against the real images (digits-FID, not Inception FID) and, for a
class-conditional model, the classifier's accuracy on the requested labels. `guidance` lists
classifier-free guidance scales (1: the plain conditional model).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.run = ""  # the training workdir (required)
    c.classifier_run = ""  # a classifier's training workdir ("" : no feature metrics)
    c.use_ema = True
    c.seed = 0
    c.grid = "logsnr_uniform"
    c.solvers = ("dpmpp_2m", "ddim")
    c.steps = (10, 25, 50)
    c.guidance = (1.0,)
    c.num = 1800  # samples per row of the table (labels cycle through the classes)
    c.batch_size = 600
    return c
