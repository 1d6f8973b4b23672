#!/usr/bin/env bash
# The GPU runs of BENCHMARKS.md ("Masked diffusion of text"): configs/train.py:text_gpu on one H200, then
# experiments/text.py's samplers and steering tables on it (configs/text.py:gpu).
#   OUT=/tmp/out bash bench/gpu_text.sh      # on the device: OUT is set
# Environment: TEXT_STEPS (the config's 6000), EVAL_SECONDS (the text experiment's time limit, 300).
set -x
OUT=${OUT:-/tmp/out}; R=runs; mkdir -p "$OUT" "$R"
time python3 experiments/train.py --config=configs/train.py:text_gpu --workdir=$R/text_gpu \
    ${TEXT_STEPS:+--config.optim.total_steps=$TEXT_STEPS} --config.keep_checkpoints=1 2>&1 | tail -1
cp $R/text_gpu/log.jsonl "$OUT/text_gpu_log.jsonl"; cp $R/text_gpu/final.json "$OUT/text_gpu_final.json"
cp $R/text_gpu/samples_*.txt "$OUT/text_gpu_samples.txt"
time timeout ${EVAL_SECONDS:-300} python3 experiments/text.py --config=configs/text.py:gpu --config.run=$R/text_gpu \
    --workdir=$OUT/text_eval 2>&1 | grep -v "restoring"
