#!/usr/bin/env bash
# siamax's GPU measurements in as few commands as possible (a lent GPU machine starts bare and its
# time is short). Run from the repository root, with siamax's dependencies importable:
#
#   OUT=dir SIAMAX_DATA_DIR=... [DEADLINE=epoch-seconds] benchmarks/gpu_session.sh STAGE [STAGE ...]
#
# Stages (each writes $OUT/<stage>.log and packs its result files into $OUT/<stage>.tar.gz):
#   bench         benchmarks/throughput.py for the paper network, float32 and bfloat16, batch 128,
#                 512 and 1024, and the small model with and without space-to-depth blocks, each
#                 next to the same network in PyTorch on the same GPU, plus the measured bf16
#                 matrix-product rate; then a device trace of the paper network's training step
#                 (benchmarks/gpu_profile.py; results in benchmarks/results/gpu_h100_*)
#   profile       benchmarks/gpu_profile.py: ceilings, per-layer timings, training-step variants
#   sweep         round 1 of experiments.validation_sweep on quick-preset variants (validation
#                 alphabets only), four processes side by side: the small model leaves the GPU idle
#   sweep2        round 2, around round 1's choice     (results/validation_sweeps/round*.json)
#   sweep3        round 3, around round 2's choice
#   quick         the quick preset end to end, float32 and bfloat16
#   paper:E       the paper preset end to end, cut to E epochs
#   paper_bf16:E  the same with --dtype bfloat16           (results/paper_bf16_*epochs_h100/)
#   NAME_bg       stage NAME in the background, with a small share of GPU memory, while the next
#                 stages run
# With DEADLINE set, sweeps and paper runs are stopped 30 s before it, so that what they finished is
# still packed before the command's own time limit. The 2026-11-23 session ran `bench sweep`,
# `sweep`, `quick_bg paper_bf16:3`, `sweep2_bg paper_bf16:4` and `sweep3`, one command each.
set -uo pipefail
OUT=${OUT:?set OUT to the folder for results}
RUNS=${RUNS:-/tmp/siamax_runs}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SIAMAX_TFDS_DIR=${SIAMAX_TFDS_DIR:-/tmp/siamax_tfds}
mkdir -p "$OUT" "$RUNS"

pack() {  # results without checkpoints or exported weights (too large to bring back)
  tar -C "$RUNS" -czf "$OUT/$1.tar.gz" --exclude=checkpoints --exclude=model.msgpack "${@:2}"
}

seconds_left() { echo $(( ${DEADLINE:-$(( $(date +%s) + 86400 ))} - $(date +%s) - 30 )); }

sweep() {  # sweep ROUND GROUP FLAGS...: one validation_sweep process, in the background, with a
  # fifth of the GPU's memory (XLA would take three quarters per process), four side by side
  local round=$1 group=$2; shift 2
  XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.2} \
    timeout "$(seconds_left)" python -m experiments.validation_sweep --preset quick --seeds 0,1 \
    --val-trials 1000 --no-progress --workdir "$RUNS/$round/$group" "$@" > "$RUNS/${round}_$group.log" 2>&1 &
}

finish_sweep() {  # wait for a round's processes, show their tables, pack
  wait
  tail -n 8 "$RUNS/$1"_?.log
  pack "$1" "$1" "$1"_a.log "$1"_b.log "$1"_c.log "$1"_d.log
}

stage_bench() {  # most important first: a run past the deadline is skipped
  mkdir -p "$RUNS/bench"
  local m b dtype impl peak=--peak
  for m in paper:512:bfloat16 paper:128:float32 paper:1024:bfloat16 paper:512:float32 paper:128:bfloat16 \
           small:512:bfloat16:auto small:512:bfloat16:xla; do
    IFS=: read -r model b dtype impl <<< "$m"
    (( $(seconds_left) > 90 )) || { echo "skipped $m: deadline"; continue; }
    timeout "$(seconds_left)" python benchmarks/throughput.py --model "$model" --batch-size "$b" --dtype "$dtype" \
      --repeats 5 --compare torch $peak ${impl:+--conv-impl $impl} \
      --json "$RUNS/bench/gpu_${model}_${dtype}_b$b${impl:+_$impl}.json"
    peak=
  done
  (( $(seconds_left) > 90 )) && timeout "$(seconds_left)" python benchmarks/gpu_profile.py --trace-only \
    --batch-sizes 512 --out "$RUNS/bench/trace_paper_bf16_b512"
  pack bench bench
}

stage_profile() {
  timeout "$(seconds_left)" python benchmarks/gpu_profile.py --batch-sizes 512,1024 --out "$RUNS/profile" \
    --deadline $(( $(date +%s) + $(seconds_left) ))
  pack profile profile
}

stage_sweep() {  # round 1, from the previous quick preset (12 drawers, Adam 1e-3 x0.92, patience 6)
  sweep sweep a --variant base --variant 'all20=--train-drawers 20' \
    --variant 'all20_aug=--train-drawers 20 --augment true' \
    --variant 'all20_rot_decay95=--train-drawers 20 --rotations true --lr-decay 0.95'
  sweep sweep b --variant 'rot=--rotations true' --variant 'all20_rot=--train-drawers 20 --rotations true'
  sweep sweep c --variant 'all20_rot_aug=--train-drawers 20 --rotations true --augment true' \
    --variant 'all20_rot_2alph=--train-drawers 20 --rotations true --episode-alphabets 2'
  sweep sweep d --variant 'all20_rot_c10d8=--train-drawers 20 --rotations true --episode-chars 10 --episode-drawers 8' \
    --variant 'all20_rot_lr2=--train-drawers 20 --rotations true --learning-rate 2e-3'
  finish_sweep sweep
}

stage_sweep2() {  # round 2, from round 1's choice (--train-drawers 20 --rotations true --lr-decay 0.95)
  sweep sweep2 a --patience 0 --variant q --variant 'q_bf16=--dtype bfloat16'
  sweep sweep2 b --patience 0 --variant 'q_lr2=--learning-rate 2e-3' \
    --variant 'q_lr2_d97=--learning-rate 2e-3 --lr-decay 0.97'
  sweep sweep2 c --patience 0 --variant 'q_norot=--rotations false' --variant 'q_lr3=--learning-rate 3e-3'
  sweep sweep2 d --patience 0 --variant 'q_c16d5=--episode-chars 16 --episode-drawers 5' --variant 'q_l2=--l2 1e-4'
  finish_sweep sweep2
}

stage_sweep3() {  # round 3, from the same preset as round 2, where --learning-rate 3e-3 looked best
  sweep sweep3 a --patience 0 --variant 'q_lr3=--learning-rate 3e-3'
  sweep sweep3 b --patience 0 --variant 'q_lr3_bf16=--learning-rate 3e-3 --dtype bfloat16'
  sweep sweep3 c --patience 0 --variant 'q_lr5=--learning-rate 5e-3'
  sweep sweep3 d --patience 0 --variant 'q_lr3_d97=--learning-rate 3e-3 --lr-decay 0.97'
  finish_sweep sweep3
}

stage_quick() {
  for dtype in float32 bfloat16; do
    python -m experiments.omniglot_oneshot --preset quick --dtype $dtype --no-progress \
      --workdir "$RUNS/quick_$dtype"
  done
  pack quick quick_float32 quick_bfloat16
}

stage_paper() {  # $1: epochs, $2: dtype
  timeout "$(seconds_left)" python -m experiments.omniglot_oneshot --preset paper --epochs "$1" \
    --dtype "$2" --no-progress --workdir "$RUNS/paper_$2_e$1"
  pack "paper_$2" "paper_$2_e$1"
}

nvidia-smi -L 2>/dev/null
python -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, \
  'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
case " $* " in  # prepare the dataset once, before any stage that trains
  *" sweep"*|*" quick"*|*" paper"*) python -c "import siamax.data as d; d.load_omniglot()" ;;
esac
for stage in "$@"; do
  name=${stage%%:*} arg=${stage#*:}
  echo "=== $stage $(date -u +%FT%TZ)"
  case $name in
    *_bg)
      (export XLA_PYTHON_CLIENT_MEM_FRACTION=0.08; "stage_${name%_bg}" > "$OUT/${name%_bg}.log" 2>&1) &
      export XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 ;;
    bench|profile|sweep|sweep2|sweep3|quick) "stage_$name" 2>&1 | tee "$OUT/$name.log" ;;
    paper) stage_paper "$arg" float32 2>&1 | tee "$OUT/paper_float32.log" ;;
    paper_bf16) stage_paper "$arg" bfloat16 2>&1 | tee "$OUT/paper_bfloat16.log" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
wait
echo "=== done $(date -u +%FT%TZ)"
