#!/usr/bin/env bash
# The GPU runs of BENCHMARKS.md ("Likelihoods and composition"): the digits experts on {0..4} and
# {5..9}, their router, a model of every digit and a clean classifier (configs/ensemble.py,
# configs/train.py:digits_unet, configs/classifier.py:digits), trained side by side on one device, then
# experiments/compose.py and experiments/likelihood.py on them.
#   OUT=/tmp/out bash bench/gpu_compose.sh      # on the device: OUT is set
# Environment: STEPS (diffusion and router steps, 4000), SAMPLES (per composition method, 1024).
set -x
OUT=${OUT:-/tmp/out}; R=runs; mkdir -p "$OUT" "$R"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.1}  # five runs share the device
S=${STEPS:-4000}
FAST="--config.steps_per_call=100 --config.log_every=500 --config.keep_checkpoints=1"
train() {  # name config extra...
    local name=$1 config=$2; shift 2
    python3 experiments/train.py --config=$config --workdir=$R/$name $FAST "$@" > "$R/train_$name.log" 2>&1 \
        || tail -5 "$R/train_$name.log"
}
time {
train expert0 configs/ensemble.py:expert0 --config.optim.total_steps=$S --config.checkpoint_every=$S &
train expert1 configs/ensemble.py:expert1 --config.optim.total_steps=$S --config.checkpoint_every=$S &
train router configs/ensemble.py:router --config.optim.total_steps=$S --config.checkpoint_every=$S &
train full configs/train.py:digits_unet --config.optim.total_steps=$S --config.checkpoint_every=$S &
train classifier configs/classifier.py:digits --config.optim.total_steps=1500 --config.checkpoint_every=1500 &
wait
}
for name in expert0 expert1 router full classifier; do echo "$name: $(tail -1 $R/$name/log.jsonl)"; done
unset XLA_PYTHON_CLIENT_MEM_FRACTION
time python3 experiments/compose.py --config=configs/compose.py:digits \
    --config.experts="('$R/expert0', '$R/expert1')" --config.router=$R/router --config.full=$R/full \
    --config.classifier=$R/classifier --config.num_samples=${SAMPLES:-1024} --workdir=$OUT/compose \
    2> "$R/compose.err" || tail -5 "$R/compose.err"
time python3 experiments/likelihood.py --config=configs/likelihood.py:digits --config.run=$R/full \
    --config.num_images=320 --config.batch_size=64 --config.compare_untrained=True \
    --workdir=$OUT/likelihood 2> "$R/likelihood.err" || tail -5 "$R/likelihood.err"
