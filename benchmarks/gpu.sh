#!/usr/bin/env bash
# The speed benchmarks on a GPU machine, in one run; prints their JSON lines (and saves them to $OUT).
#
#   bash benchmarks/gpu.sh            # with jax[cuda], flax, optax, orbax, pillow, tqdm installed
#
# Optional: wheels in .whl/ are installed first into /tmp/site (e.g. the pinned flax, or normflows
# for the PyTorch comparison, which runs when torch and normflows import).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=3
out=${OUT:-/tmp/jaxflows-gpu}
mkdir -p "$out"
if compgen -G ".whl/*" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .whl/* \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$out/gpu.txt"

run() {  # run NAME COMMAND...: keep the JSON line, show everything
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.log" | grep -v '^WARNING' | tail -n 4
}
glow="--model glow --levels 3 --hidden 128 --batch 64 --image 32x32x3 --iters 30"
run train_k8 python3 benchmarks/train_step.py $glow --steps 8
run train_k32 python3 benchmarks/train_step.py $glow --steps 32
run train_k8_invertible python3 benchmarks/train_step.py $glow --steps 8 --gradient invertible
run train_k8_b256 python3 benchmarks/train_step.py --model glow --levels 3 --hidden 512 --batch 256 \
  --image 32x32x3 --iters 20 --steps 32
run memory python3 -m benchmarks.memory
if python3 -c "import torch, normflows" 2>/dev/null; then
  run normflows_gpu python3 benchmarks/normflows_gpu.py 3 8 128 64 30
fi
echo "== JSON lines"
grep -h '^{' "$out"/*.log
