#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a machine with a CUDA GPU whose python3 already holds a CUDA
# torch and the other dependencies (an offline GPU box: wheels of this repo's transformers and tokenizers pins
# in .whl/ are installed first, if there):
#
#     OUT=runs/gpu bash bench/gpu.sh        # DEVICE=cpu runs the same steps on the CPU
#
# Writes $OUT/gpu.log (every step's output, timed) and the demo's report.md and summary.json; each step has a
# time limit, so one that hangs cannot take the others' time. docs/benchmarks.md records what it printed.
set -u
OUT=${OUT:-runs/gpu}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:bench${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
LOG=$OUT/gpu.log

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log it whole, print its end
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "=== $name: $*" >>"$LOG"
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v "Loading weights\|Writing model shards" >>"$LOG"
  rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$LOG"
}

{ nvidia-smi -L 2>/dev/null; $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$LOG"
step tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
step demo 150 $PY -m recursivemas demo --device "$DEVICE" --out /tmp/gpu-demo
cp /tmp/gpu-demo/report.md /tmp/gpu-demo/summary.json "$OUT"/ 2>/dev/null
step real_shapes 100 $PY bench/real_shapes.py --device "$DEVICE" --part speed,rollout
step latent_vs_text 90 $PY bench/latent_vs_text.py --device "$DEVICE"
step rollout 45 $PY bench/rollout.py --device "$DEVICE"
step real_train 120 $PY bench/real_shapes.py --device "$DEVICE" --part train
step real_shapes_bf16 60 $PY bench/real_shapes.py --device "$DEVICE" --dtype bfloat16 --part speed
