#!/usr/bin/env bash
# The GPU runs of BENCHMARKS.md ("Steering on one GPU"). PART=digits: a digits classifier and an
# unconditional-capable digits UNet, then experiments/steer.py with the classifier's reward.
# PART=overhead: bench/steering_overhead.py and the toy steering experiment. PART=search: the same
# digits runs, then experiments/search.py on them and on the toy.
#   OUT=/tmp/out PART=digits bash bench/gpu_steering.sh      # on the device: OUT is set
# Environment: STEPS (UNet steps, 10000), CLF_STEPS (1500), CONDITIONS (digits outputs per row, 256).
set -x
OUT=${OUT:-/tmp/out}; R=/tmp/runs; mkdir -p "$OUT" "$R"
T="--config.steps_per_call=100 --config.log_every=500"
if [ "${PART:-digits}" != overhead ]; then
time python3 experiments/train.py --config=configs/classifier.py:digits --workdir=$R/classifier $T \
    --config.optim.total_steps=${CLF_STEPS:-1500} --config.checkpoint_every=500 2>&1 | tail -1
time python3 experiments/train.py --config=configs/train.py:digits_unet --workdir=$R/digits_unet $T \
    --config.batch_size=256 --config.optim.total_steps=${STEPS:-10000} --config.checkpoint_every=5000 2>&1 | tail -1
fi
if [ "${PART:-digits}" = search ]; then
time python3 experiments/search.py --config=configs/search.py:digits --config.run=$R/digits_unet \
    --config.classifier_run=$R/classifier --config.num_conditions=${CONDITIONS:-256} \
    --workdir=$OUT/search_digits 2>&1 | grep -v "^[IW]1"
time python3 experiments/search.py --config=configs/search.py:toy --workdir=$OUT/search_toy 2>&1 | grep -v "^[IW]1"
elif [ "${PART:-digits}" = digits ]; then
time python3 experiments/steer.py --config=configs/steer.py:digits --config.run=$R/digits_unet \
    --config.classifier_run=$R/classifier --config.num_conditions=${CONDITIONS:-256} \
    --workdir=$OUT/steer_digits 2>&1 | grep -v "^[IW]1"
else
python3 bench/steering_overhead.py --conditions 16 --particles 4 16 64 --json $OUT/steering_overhead.json
time python3 experiments/steer.py --config=configs/steer.py:toy --workdir=$OUT/steer_toy 2>&1 | grep -v "^[IW]1"
fi
