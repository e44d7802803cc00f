#!/usr/bin/env bash
# The one device check of issue 13 (a lent GPU, minutes): the step benchmark, a short real-size
# training run on fabricated data, the data throughput, then torch.compile rows. Each part has its
# own time limit and the next still runs if one fails. Outputs go to $OUT (default runs/gpu_check).
#   OUT=runs/gpu_check bash scripts/gpu_check.sh
set -u
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
{
  date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers, cv2; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cv2', cv2.__version__)"
} 2>&1 | tee "$OUT/env.txt"
timeout 230 $PY scripts/bench_gpu.py --methods daformer,pipa,mic --settings tf32,bf16,bf16+ckpt --steps 8 --warmup 3 \
  --json "$OUT/bench.jsonl" 2>&1 | tee "$OUT/bench.txt"
timeout 110 $PY scripts/real_size_run.py gta2cs_pipa --iterations 30 train.amp=bf16 data.num_workers=8 \
  method.pipa.patch.start=0 2>&1 | tee "$OUT/real_size_run.txt"
timeout 60 $PY scripts/bench_data.py --workers 0,2,4,8 --images 24 --batches 16 2>&1 | tee "$OUT/bench_data.txt"
timeout 150 $PY scripts/bench_gpu.py --methods daformer,pipa --settings bf16+compile --steps 8 --warmup 3 \
  --json "$OUT/bench_compile.jsonl" 2>&1 | tee "$OUT/bench_compile.txt"
date | tee -a "$OUT/env.txt"
