#!/usr/bin/env bash
# The GPU run of BENCHMARKS.md ("Digits on one GPU"): a digits classifier (the digits-FID feature
# extractor), a class-conditional digits UNet, then samples scored with digits-FID, KID and accuracy.
#   OUT=/tmp/out bash bench/gpu_digits.sh            # on the device: OUT is set, runs go to /tmp/runs
# Environment: STEPS (UNet steps, 20000), BS (batch, 256), PER_CALL (steps per jit call, 100),
# CLF_STEPS (classifier steps, 1500), NUM (samples per row, 1800), DIT (1: also a digits DiT),
# DIT_STEPS (10000), DTYPES (1: UNet throughput in float32 and bfloat16).
set -x
OUT=${OUT:-/tmp/out}; R=/tmp/runs; mkdir -p "$OUT" "$R"
T="--config.steps_per_call=${PER_CALL:-100} --config.log_every=500"
time python3 experiments/train.py --config=configs/classifier.py:digits --workdir=$R/classifier $T \
    --config.optim.total_steps=${CLF_STEPS:-1500} --config.checkpoint_every=500 2>&1 | tail -1
time python3 experiments/train.py --config=configs/train.py:digits_unet --workdir=$R/digits_unet $T \
    --config.batch_size=${BS:-256} --config.optim.total_steps=${STEPS:-20000} --config.checkpoint_every=5000 2>&1 | tail -1
time python3 experiments/sample.py --config=configs/sample.py --config.run=$R/digits_unet \
    --config.classifier_run=$R/classifier --config.guidance="(1.0, 2.0, 4.0)" --config.steps="(10, 50)" \
    --config.num=${NUM:-1800} --config.batch_size=${NUM:-1800} --workdir=$R/digits_unet/eval 2>&1 | grep -v "^[IW]1"
cp $R/digits_unet/eval/samples_guidance_*.png "$OUT"/
tar czf "$OUT/runs.tgz" --exclude=checkpoints -C /tmp runs
if [ "${DTYPES:-1}" = 1 ]; then
for dtype in float32 bfloat16; do  # training throughput of the UNet in each compute dtype (last log row)
    python3 experiments/train.py --config=configs/train.py:digits_unet --workdir=$R/unet_$dtype $T \
        --config.batch_size=${BS:-256} --config.optim.total_steps=2000 --config.checkpoint_every=2000 \
        --config.sample.num=10 --config.compute_dtype=$dtype > /dev/null 2>&1
    echo "$dtype $(tail -1 $R/unet_$dtype/log.jsonl) $(cat $R/unet_$dtype/final.json)"
done
tar czf "$OUT/runs.tgz" --exclude=checkpoints -C /tmp runs
fi
[ "${DIT:-1}" = 1 ] || exit 0
time python3 experiments/train.py --config=configs/train.py:digits_dit --workdir=$R/digits_dit $T \
    --config.batch_size=${BS:-256} --config.optim.total_steps=${DIT_STEPS:-10000} --config.checkpoint_every=5000 2>&1 | tail -1
time python3 experiments/sample.py --config=configs/sample.py --config.run=$R/digits_dit \
    --config.classifier_run=$R/classifier --config.guidance="(1.0, 2.0)" --config.steps="(25,)" \
    --config.solvers="('dpmpp_2m',)" --config.num=${NUM:-1800} --config.batch_size=${NUM:-1800} \
    --workdir=$R/digits_dit/eval 2>&1 | grep -v "^[IW]1"
tar czf "$OUT/runs.tgz" --exclude=checkpoints -C /tmp runs
