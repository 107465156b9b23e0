#!/usr/bin/env bash
# What this code does on your GPU, in one run (about 15 minutes on an H100), everything it prints
# also in $OUT/gpu_check.log (default runs/gpu_check), the pictures beside it:
#
#   bash gpu_check.sh                                   # on the first CUDA GPU
#   REFERENCE=path/to/image-restoration-sde bash gpu_check.sh   # also against the authors' code
#   DEVICE=cpu QUICK=1 bash gpu_check.sh                # toy sizes: a check of the script itself
#
# REFERENCE is a local clone of github.com/Algolzw/image-restoration-sde (nothing is downloaded here).
# How to read each part:
# 1. Against the authors' code (with REFERENCE): their network and ours hold the same weights; the
#    first line is their largest output difference (float32 round-off, about 1e-6, or TF32's 1e-4),
#    the table their training images/s beside ours (batch 4 of 128 x 128, the ML loss) and the
#    seconds per 256 x 256 restoration at their 100 posterior steps and at our 10 and 5.
# 2. Training speed: images/s of full training steps (loss, backward, Adam, EMA) of the paper's
#    network and of the gpu preset's at batch 4, 16 and 64; MFU is the counted model FLOP/s over the
#    bf16 matmul peak measured on this card (bench.py train --peak TFLOPS takes the datasheet's);
#    "host syncs / step" should be 0: each sync stops the host from queueing the next kernels.
#    Then the same at batch 4 under CUDA graphs (torch.compile mode reduce-overhead).
# 3. The gpu preset against its CNN: IR-SDE (10 posterior steps) and the same network trained as a
#    CNN, the same steps and data, trained side by side; the paper's claim is that IR-SDE restores
#    at least as well. PSNR-Y and SSIM-Y higher is better, GMSD lower, texture near 1 (below: blur,
#    above: noise), colour shift lower (a veil or cast left behind). Open the pictures.
# 4. Quality against steps: the same IR-SDE checkpoint restored with 1 to 100 posterior steps. A
#    chain that refines gains from 1 to 10 steps; 20 to 100 should stay within about 0.2 dB of 10.
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
part() { echo; echo "== $* ($(date +%T))"; }
if [ -n "${QUICK:-}" ]; then
    NET=tiny; BATCHES="2"; PRESET_ARGS="--iters 4 --crop 32 --batch 2 --val-images 2 --T 20 --val-every 4"; STEPS="1 2 4"
else
    NET=paper; BATCHES="4 16 64"; PRESET_ARGS=""; STEPS="1 3 10 20 50 100"
fi

{
part "machine"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__)"

part "1. against the authors' code"
if [ -n "${REFERENCE:-}" ]; then
    $PY bench.py reference --reference "$REFERENCE" --device "$DEVICE"
else
    echo "skipped: set REFERENCE to a clone of the authors' repository"
fi

part "2. training speed"
$PY bench.py train --device "$DEVICE" --presets $NET gpu --batch $BATCHES
$PY bench.py train --device "$DEVICE" --presets $NET --batch ${BATCHES%% *} --compile reduce-overhead

part "3. the gpu preset against its CNN (seed 0, side by side)"
rm -rf "$OUT/irsde" "$OUT/cnn"
$PY train.py --task derain --preset gpu --device "$DEVICE" $PRESET_ARGS --out "$OUT/irsde" > "$OUT/irsde.log" 2>&1 &
$PY train.py --task derain --preset gpu --device "$DEVICE" $PRESET_ARGS --out "$OUT/cnn" --loss cnn > "$OUT/cnn.log" 2>&1 &
wait
for model in irsde cnn; do echo "$model:"; grep -E "^(recipe|timing|val|unseen)" "$OUT/$model.log"; tail -n 1 "$OUT/$model.log"; done
$PY bench.py compare --checkpoints "$OUT/irsde/last.pt" "$OUT/cnn/last.pt" --device "$DEVICE" --out "$OUT"

part "4. quality against steps"
$PY bench.py sample --checkpoint "$OUT/irsde/last.pt" --device "$DEVICE" --samplers posterior --sample-steps $STEPS
} 2>&1 | tee "$OUT/gpu_check.log"
