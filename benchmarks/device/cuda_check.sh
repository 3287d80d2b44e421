#!/usr/bin/env bash
# The checks that need a GPU, as one script for a short lease on a CUDA machine whose python3
# already has torch, transformers, tokenizers, safetensors, matplotlib, pytest and hypothesis
# (nothing is installed: the packages run from their source trees). Run from the repository root:
#
#   OUT=/some/dir bash benchmarks/device/cuda_check.sh
#
# Writes under $OUT: cuda_check.log (everything printed), optimizer_step_cuda.{json,md}.
# Each part has its own time limit, so a stuck part costs its limit and not the lease.
# A dry run of the script itself on a CPU machine: DEVICE=cpu BENCH_ARGS="--sets tiny --reps 2".
set -u
OUT=${OUT:?set OUT to a folder for the results}
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:---gpt2-layers 12 --reps 15 --steps 5}
export PYTHONPATH=packages/mugrokfast/src:packages/cognate-model/src:packages/cognate-train/src
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
LOG=$OUT/cuda_check.log
RUN=$(mktemp -d)
part() { echo; echo "=== $1 ($(date -u +%T))"; }
{
part "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'transformers', transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

part "1. CUDA tests (mugrokfast: CPU parity, resume, compiled step without graph breaks; model)"
timeout 300 python3 -m pytest -q -rs -p no:cacheprovider \
  packages/mugrokfast/tests/test_cuda.py packages/mugrokfast/tests/test_newton_schulz.py \
  packages/cognate-model/tests/test_precision.py
echo "pytest rc=$?"

part "2. optimizer step cost on CUDA (defaults vs tuned vs torch Muon + AdamW, GPT-2 small x 12)"
# shellcheck disable=SC2086
timeout 240 python3 benchmarks/optimizer_step.py --device "$DEVICE" $BENCH_ARGS \
  --out "$OUT/optimizer_step_$DEVICE.json"
echo "optimizer_step rc=$?"

part "3. cognate-train on CUDA: smoke train, resume from step 16, eval, generate"
timeout 120 python3 -m cognate_train train --preset smoke --device "$DEVICE" --output-dir "$RUN/a" | grep -v '^- \['
echo "train rc=${PIPESTATUS[0]}"
timeout 120 python3 -m cognate_train train --preset smoke --device "$DEVICE" --output-dir "$RUN/b" \
  --resume "$RUN/a/checkpoints/step-000016" | tail -3
echo "resumed train rc=${PIPESTATUS[0]}"
python3 - "$RUN" <<'PY'
import sys
from safetensors.torch import load_file
a, b = (load_file(f"{sys.argv[1]}/{r}/final/model.safetensors") for r in "ab")
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"resume: bit-identical {all(a[k].equal(b[k]) for k in a)}, max |diff| {diff:.3g}")
PY
timeout 60 python3 -m cognate_train eval --checkpoint "$RUN/a/final" --device "$DEVICE" --json
echo "eval rc=$?"
timeout 60 python3 -m cognate_train generate --checkpoint "$RUN/a/final" --device "$DEVICE" --prompt "add 12+30:" \
  --max-new-tokens 8
echo "generate rc=$?"

part "4. mugrokfast's whole suite under this torch (CPU tests, 8 workers)"
timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 packages/mugrokfast/tests | tail -15
part "5. the quick preset's speed model on this device (wall time; val figures under bf16)"
timeout 150 python3 -m cognate_train train --preset quick --specialization speed \
  --device "$DEVICE" --output-dir "$RUN/quick" | grep -v '^- \[' | tail -6
echo "quick rc=${PIPESTATUS[0]}"
cp "$RUN/quick/summary.json" "$OUT/quick_speed_summary.json" 2>/dev/null
part "done"
} 2>&1 | tee "$LOG"
