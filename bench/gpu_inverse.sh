#!/usr/bin/env bash
# The GPU runs of BENCHMARKS.md ("Inverse problems"). PART=invert: a shapes UNet (32x32 RGB), then
# experiments/invert.py on it. PART=overhead: bench/inverse_overhead.py (random weights).
#   OUT=/tmp/out PART=invert bash bench/gpu_inverse.sh      # on the device: OUT is set
# Environment: SHAPES_STEPS (6000), IMAGES (shapes images restored, 32), TASKS ("('box', 'sr2', 'blur')"),
# PROBE=1: also RED-diff at lr 0.05 and 0.03 and PiGDM at the paper's data_variance 1 (BENCHMARKS' probe).
set -x
OUT=${OUT:-/tmp/out}; R=runs; mkdir -p "$OUT" "$R"
if [ "${PART:-invert}" = invert ]; then
time python3 experiments/train.py --config=configs/train.py:shapes_unet --workdir=$R/shapes_unet \
    --config.steps_per_call=100 --config.log_every=500 --config.keep_checkpoints=1 --config.batch_size=128 \
    --config.optim.total_steps=${SHAPES_STEPS:-6000} --config.checkpoint_every=${SHAPES_STEPS:-6000} 2>&1 | tail -1
cp $R/shapes_unet/log.jsonl "$OUT/shapes_log.jsonl"
time python3 experiments/invert.py --config=configs/invert.py:shapes --config.run=$R/shapes_unet \
    --config.num_images=${IMAGES:-32} --config.batch_size=${IMAGES:-32} \
    --config.tasks="${TASKS:-('box', 'sr2', 'blur')}" --workdir=$OUT/invert_shapes 2>&1 | grep -v "restoring"
if [ "${PROBE:-0}" = 1 ]; then
for extra in "--config.methods=('reddiff',) --config.reddiff.lr=0.05" "--config.methods=('reddiff',) --config.reddiff.lr=0.03" \
             "--config.methods=('pigdm',) --config.pigdm.data_variance=1.0"; do
    name=$(echo "$extra" | sed 's/.*config\.//; s/=/_/')
    python3 experiments/invert.py --config=configs/invert.py:shapes --config.run=$R/shapes_unet \
        --config.num_images=${IMAGES:-32} --config.batch_size=${IMAGES:-32} \
        --config.tasks="${TASKS:-('box', 'sr2', 'blur')}" $extra --workdir=$OUT/probe_$name 2>&1 | grep -v "restoring"
done
fi
else
python3 bench/inverse_overhead.py --batch 64 --steps 50 --task box --json $OUT/inverse_overhead_box.json
python3 bench/inverse_overhead.py --batch 64 --steps 50 --task sr2 --json $OUT/inverse_overhead_sr2.json
fi
