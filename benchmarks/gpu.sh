#!/usr/bin/env bash
# The GPU measurements of the precision policy, in one run (docs/precision.md says what each shows).
#
#   bash benchmarks/gpu.sh [PART ...]     # parts: long ab policies normflows (default: all four)
#
#   long       the long Fashion-MNIST configuration trained in full with the default policy, then
#              `--mode eval` of its model under each network policy: held-out bits/dim and the
#              whole flow's max reconstruction error per policy; its weights are kept (tar.gz)
#   ab         the standard (L=3 K=8 H=128 B=64) and paper-size (L=3 K=32 H=512 B=64) Glow steps,
#              this code against an older one in .old/ (see below), alternating, two rounds
#   policies   the same two steps with networks at "default" precision (TF32) and in bfloat16
#   normflows  normflows on the same GPU, eager and with torch.compile (needs torch + normflows)
#
# Estimated (not yet measured) on one H200: long 5.5 min, ab 3 min, policies 1.5 min, normflows 3 min;
# run `long ab` first, the rest in a second call if the device time allows.
#
# Set-up, prepared here (see ../shared/GPU_NOTES.md): wheels the GPU image lacks in .whl/ (tensorboardX,
# normflows); Fashion-MNIST's four .gz files in .data/fashion-mnist/; the older code to compare with in
# .old/ (`git archive COMMIT jaxflows | tar -x -C .old`); all three ignored by .git/info/exclude and
# named in the device call's `carry`. Results go to $OUT (default /tmp/jaxflows-gpu): results.jsonl
# (every JSON line), log.txt (every part's output) and long_fashion_mnist_weights.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=3
out=${OUT:-/tmp/jaxflows-gpu}
work=${WORK:-/tmp/jaxflows-gpu-work}
mkdir -p "$out" "$work"
log="$out/log.txt"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -d .data/fashion-mnist ] && export JAXFLOWS_FASHION_MNIST_DIR=$PWD/.data/fashion-mnist
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee -a "$log"

part() {  # part NAME SECONDS COMMAND...: one bounded step; its output goes to log.txt, its JSON lines to results.jsonl
  local name=$1 limit=$2; shift 2
  echo "== $name (limit $limit s): $*" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$@" > "$work/$name.log" 2>&1
  local code=$?
  grep -v '^WARNING' "$work/$name.log" >> "$log"
  grep -h '^{' "$work/$name.log" >> "$out/results.jsonl"
  echo "   $name: exit $code after $((SECONDS - start)) s" | tee -a "$log"
  grep -v '^WARNING' "$work/$name.log" | tail -n 4
}

step() {  # step NAME [train_step.py flags]: one timed Glow step (no cost analysis: it is slow for K=32)
  local name=$1; shift
  part "$name" 150 python3 benchmarks/train_step.py --model glow --levels 3 --batch 64 --image 32x32x3 \
    --iters 30 --no-flops "$@"
}
standard="--depth 8 --hidden 128"
paper="--depth 32 --hidden 512"

run_long() {
  local dir="$work/long" train="python3 -m experiments.train --no_progress"
  part long_train 420 $train --config experiments/configs/fashion_mnist.py --workdir "$dir"
  [ -f "$dir/config.json" ] || return
  part long_eval_tf32 120 $train --mode eval --workdir "$dir" --set network_precision=default
  part long_eval_bf16 120 $train --mode eval --workdir "$dir" --set network_dtype=bfloat16
  part long_eval_bf16_default 120 $train --mode eval --workdir "$dir" \
    --set network_dtype=bfloat16 network_precision=default
  tar -czf "$out/long_fashion_mnist_weights.tar.gz" -C "$work" long/config.json long/checkpoints
}

run_ab() {
  if [ ! -d .old/jaxflows ]; then echo "ab: no .old/jaxflows to compare with" | tee -a "$log"; return; fi
  for round in 1 2; do
    step "ab${round}_standard_old" $standard --src .old
    step "ab${round}_standard_new" $standard
    step "ab${round}_paper_old" $paper --src .old
    step "ab${round}_paper_new" $paper
  done
}

run_policies() {
  for size in standard paper; do
    step "policy_${size}_tf32_networks" ${!size} --network-precision default
    step "policy_${size}_bf16_networks" ${!size} --network-dtype bfloat16
  done
}

run_normflows() {
  if ! python3 -c "import torch, normflows" 2>/dev/null; then echo "normflows: not importable" | tee -a "$log"; return; fi
  part normflows_eager 150 python3 benchmarks/normflows_gpu.py 3 8 128 64 30
  part normflows_compile 300 python3 benchmarks/normflows_gpu.py 3 8 128 64 30 --compile
}

for name in "${@:-long ab policies normflows}"; do
  for p in $name; do "run_$p"; done
done
echo "== JSON lines ($out/results.jsonl)"
cat "$out/results.jsonl" 2>/dev/null
