#!/usr/bin/env bash
# The device check of the HRDA issue (a lent GPU, ~8 minutes): the HRDA step against the hardware
# (MiT-B5, 1024x1024 crops, random weights), a short real-size gta2cs_hrda_pipa run on fabricated
# trees (loaders, 1024 windows at evaluation), and meanwhile, on the machine's CPU cores, the video
# track of the demo (3 seeds, self_training and pipa, 6 runs at once). Outputs go to $OUT.
#   OUT=runs/gpu_check_hrda bash scripts/gpu_check_hrda.sh
set -u
OUT=${OUT:-runs/gpu_check_hrda}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
{
  date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  $PY -c "import torch, transformers, cv2; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cv2', cv2.__version__)"
} 2>&1 | tee "$OUT/env.txt"
VDEMO=${VDEMO:-/tmp/video_demo}
( CUDA_VISIBLE_DEVICES= timeout ${DEMO_S:-470} $PY -m pipa demo --seeds 3 --track video --methods self_training,pipa \
    --jobs 6 --out "$VDEMO" > "$OUT/video_demo.txt" 2>&1 ) &
DEMO=$!
timeout 210 $PY scripts/bench_gpu.py --methods daformer,hrda,hrda_pipa,mic_hrda --settings tf32,bf16+ckpt --steps 5 \
  --warmup 2 --json "$OUT/bench.jsonl" 2>&1 | tee "$OUT/bench.txt"
timeout 150 $PY scripts/real_size_run.py gta2cs_hrda_pipa --iterations 10 train.amp=bf16 data.num_workers=4 \
  method.pipa.patch.start=0 2>&1 | tail -20 | tee "$OUT/real_size_run.txt"
wait $DEMO
cp "$VDEMO"/results.json "$VDEMO"/report.md "$OUT"/ 2>/dev/null
for f in "$VDEMO"/video/*/seed*/result.json; do d=${f#"$VDEMO"/}; mkdir -p "$OUT/$(dirname "$d")"; cp "$f" "$OUT/$d"; done 2>/dev/null
date | tee -a "$OUT/env.txt"
