#!/usr/bin/env bash
# The GPU checks of issues 20 (speed) and 22 (a GPU preset) for a lent H100/H200, in two parts of
# at most 5 minutes each: everything they print in $OUT/gpu_check.log, the pictures beside it.
#
# From a session with the device tool, in the repository root, one call per part (the machine
# stays warm between them; 22 first, the issue that needs the GPU most):
#   run(command="bash gpu_check.sh 22", timeout_s=420)
#   run(command="bash gpu_check.sh 20", carry=["out/reference"], timeout_s=420)
# A session has 15 minutes of device time, the machine's start included: check `status` between the
# calls, and run part 20 only while budget_left_s still covers its 420 s.
# out/reference holds the authors' network and SDE for `bench.py reference` (nothing is
# downloaded there); made on the CPU machine with the search tool's `fetch` and
#   mkdir -p out/reference && git -C /work/.mirror/Algolzw+image-restoration-sde/repo archive HEAD \
#     codes/config/deraining/models/modules codes/utils/sde_utils.py | tar -x -C out/reference
# Without it that step is skipped. On a CPU, `DEVICE=cpu QUICK=1 bash gpu_check.sh` runs every
# step at toy sizes (a check of the script itself, not of any number).
set -uo pipefail
PART=${1:-all}
OUT=${OUT:-runs/gpu_check}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
RUNS=$(mktemp -d)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
step() { echo; echo "== $* ($(date +%T))"; }
if [ -n "${QUICK:-}" ]; then  # toy sizes: the script's own smoke test
    NET=tiny; BATCHES="2"; GPU_BATCH=2; PAIR="--iters 4 --crop 32 --batch 2 --val-images 2 --T 20 --val-every 4 --save-every 4"
    STEPS="2 4"; REAL="--preset tiny --iters 6 --crop 32 --batch 2 --val-images 1"
else
    NET=paper; BATCHES="4 16 64"; PAIR=""; STEPS="10 20 50 100"; REAL=""
fi

{
step "machine"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__)"
git log -1 --format='commit %h %cd' 2>/dev/null; date -u

if [ "$PART" != 22 ]; then  # ---- issue 20: speed
step "20.1 the paper preset against the authors' code, same card"
if [ -d out/reference ]; then
    timeout 90 $PY bench.py reference --reference out/reference --device "$DEVICE"
else
    echo "skipped: out/reference is missing (see the top of this script)"
fi
step "20.2 training steps: batch $BATCHES, TFLOP/s, MFU, host syncs, data rate per worker"
timeout 90 $PY bench.py train --device "$DEVICE" --presets $NET --batch $BATCHES
step "20.1 CUDA graphs (torch.compile mode reduce-overhead), the smallest batch"
timeout 100 $PY bench.py train --device "$DEVICE" --presets $NET --batch ${BATCHES%% *} --compile reduce-overhead
step "20.1 the real command, 45 s: its logged images/s against the step alone above"
timeout -s INT 45 $PY train.py --task derain --device "$DEVICE" --out "$RUNS/paper" --log-every 200 $REAL
echo "exit status $? (130: stopped by the timeout's Ctrl-C, as planned)"
fi

if [ "$PART" != 20 ]; then  # ---- issue 22: the GPU preset against its CNN, side by side (equal steps)
step "22 the GPU preset's training step alone: images/s, MFU, host syncs"
timeout 60 $PY bench.py train --device "$DEVICE" --presets gpu --batch ${GPU_BATCH:-32}
step "22 --preset gpu, IR-SDE and its CNN baseline, seed 0, side by side"
# a run still going after 4 minutes is stopped like Ctrl-C: it saves last.pt, and the log says its step
timed_run() { local start=$SECONDS; timeout -s INT 240 $PY train.py --task derain --preset gpu --device "$DEVICE" --seed 0 $PAIR "$@"
              local status=$?; echo "wall time $((SECONDS - start)) s, exit status $status"; }
timed_run --out "$RUNS/irsde" > "$RUNS/irsde.log" 2>&1 &
timed_run --out "$RUNS/cnn" --loss cnn > "$RUNS/cnn.log" 2>&1 &
wait
echo "IR-SDE:"; grep -E "^(recipe|timing|val|unseen)" "$RUNS/irsde.log"; tail -n 2 "$RUNS/irsde.log"
echo "CNN:"; grep -E "^(timing|val|unseen)" "$RUNS/cnn.log"; tail -n 2 "$RUNS/cnn.log"
step "22.2 more steps do not hurt"
$PY bench.py sample --checkpoint "$RUNS/irsde/last.pt" --device "$DEVICE" --samplers posterior --sample-steps $STEPS
step "22.6 x0_hat against t: the forward process and the chain"
$PY bench.py chain --checkpoint "$RUNS/irsde/last.pt" --device "$DEVICE" --sample-steps $STEPS
step "22.1, 22.4 IR-SDE against the CNN: PSNR-Y, GMSD, texture; pictures"
$PY bench.py compare --checkpoints "$RUNS/irsde/last.pt" "$RUNS/cnn/last.pt" --device "$DEVICE" --out "$OUT"
cp "$(ls "$RUNS"/irsde/val_trajectory_*.png | tail -n 1)" "$OUT/irsde_val_trajectory.png"
cp "$RUNS/irsde/metrics.jsonl" "$OUT/irsde_metrics.jsonl"; cp "$RUNS/cnn/metrics.jsonl" "$OUT/cnn_metrics.jsonl"
fi
step "done"
} 2>&1 | tee -a "$OUT/gpu_check.log"
