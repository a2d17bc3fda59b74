#!/usr/bin/env bash
# GPU check of nnunetv2_mapo (docs/usage.md, "On a GPU"): nnUNetTrainer against nnUNetTrainerMAPO on the hippocampus
# 3d_fullres with torch.compile on, a preference round included. Prints seconds per iteration, peak GPU memory, the
# number of recompilations and the MAPO metrics of both, and the wall time of each stage.
#
#   scripts/gpu_check.sh [RAW_DATASET]
#
# Where it finds what to run with, in this order:
#   - gpu_bundle/ (made here by `python3 scripts/gpu_bundle.py build`, carried to a machine without a package
#     registry): installed once into .gpu_env (the machine's torch and friends stay visible), its dataset used;
#   - .venv (`make setup`), else `make setup` (needs the registry).
# The dataset: RAW_DATASET, else the bundle's, else ../shared/data/Dataset004_Hippocampus (nnU-Net raw format).
# GPU_CHECK_DEVICE=cpu, GPU_CHECK_ITERATIONS=N and GPU_CHECK_ROUND_CASES=M (training cases per preference round,
# default MAPO's own) rehearse the same steps on a CPU (docs/usage.md).
# Works on a copy of the dataset in a temporary folder; writes nothing else but .gpu_env.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
ITERATIONS=${GPU_CHECK_ITERATIONS:-100}
ROUND_CASES=${GPU_CHECK_ROUND_CASES:-}
BUNDLE=gpu_bundle
RAW=${1:-}
if [ -z "$RAW" ]; then
  RAW=../shared/data/Dataset004_Hippocampus
  [ -d "$BUNDLE/Dataset004_Hippocampus" ] && RAW=$BUNDLE/Dataset004_Hippocampus
fi
test -d "$RAW" || { echo "gpu_check: no raw dataset at $RAW (give the path of Dataset004_Hippocampus)" >&2; exit 2; }
for VALUE in "$ITERATIONS" "${ROUND_CASES:-1}"; do
  case "$VALUE" in ''|*[!0-9]*|0) echo "gpu_check: GPU_CHECK_ITERATIONS and GPU_CHECK_ROUND_CASES must be positive \
integers, got '$VALUE'" >&2; exit 2;; esac
done

START=$(date +%s)
STAGE_START=$START
stage() {  # prints the wall time of the stage that just ended
  local now; now=$(date +%s)
  echo "stage: $1 $((now - STAGE_START)) s"
  STAGE_START=$now
}

if [ -d "$BUNDLE/wheels" ]; then
  ENV=.gpu_env
  test -x "$ENV/bin/nnUNetv2_train" || python3 scripts/gpu_bundle.py install --bundle "$BUNDLE" --env "$ENV"
else
  ENV=.venv
  test -x "$ENV/bin/python" || make setup
fi
PY=$ENV/bin/python
$PY -c "import nnunetv2, nnunetv2_mapo, SimpleITK, monai"
stage install
if [ "$DEVICE" = cuda ]; then
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device')"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PATH="$PWD/$ENV/bin:$PATH" nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed"
export nnUNet_results="$WORK/results" nnUNet_compile=1 nnUNet_def_n_proc=4 nnUNet_n_proc_DA=8
[ "$DEVICE" = cpu ] && export nnUNet_def_n_proc=1 nnUNet_n_proc_DA=1
mkdir -p "$nnUNet_raw" && cp -r "$RAW" "$nnUNet_raw/Dataset004_Hippocampus"
# the benchmark's nnUNetTrainer with a budget is visible to nnU-Net's lookup in this script's processes only
nnUNet_extTrainer=$($PY -c "import os; from nnunetv2_mapo.benchmark.lookup import with_benchmark_trainers as w; \
print(w(os.environ)['nnUNet_extTrainer'])")
export nnUNet_extTrainer
nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres -np 4 > "$WORK/plan.log" 2>&1 || { tail -40 "$WORK/plan.log"; exit 1; }
stage plan_and_preprocess

# 4 epochs: warm-up 2 epochs, then a round at the start of epochs 2 and 3.
VAL=$(( ITERATIONS < 10 ? ITERATIONS : 10 ))
BUDGET="{\"num_epochs\": 4, \"num_iterations_per_epoch\": $ITERATIONS, \"num_val_iterations_per_epoch\": $VAL"
MAPO_CONFIG="\"mapo_warmup_epochs\": 2, \"mapo_regen_every\": 1"
[ -n "$ROUND_CASES" ] && MAPO_CONFIG="$MAPO_CONFIG, \"mapo_cases_per_round\": $ROUND_CASES"
for TRAINER in nnUNetTrainerBenchmarkBaseline nnUNetTrainerMAPO; do
  CONFIG="$BUDGET}"
  [ "$TRAINER" = nnUNetTrainerMAPO ] && CONFIG="$BUDGET, $MAPO_CONFIG}"
  # TORCH_LOGS=recompiles prints one line per recompilation of a compiled function
  nnUNet_mapo_config="$CONFIG" TORCH_LOGS=recompiles nnUNetv2_train 4 3d_fullres 0 -tr "$TRAINER" -device "$DEVICE" \
    > "$WORK/$TRAINER.log" 2>&1 || { tail -40 "$WORK/$TRAINER.log"; exit 1; }
  stage "train_$TRAINER"
done

$PY - "$nnUNet_results" "$WORK" "$ITERATIONS" <<'PYTHON'
import glob, math, os, sys
import torch
from nnunetv2_mapo.training.gpu_memory import read_peak_gpu_memory

results, work, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU rehearsal)"
print(f"device: {device}; torch {torch.__version__}; {iterations} iterations per epoch")
print("| trainer | s/iteration (epochs 2-3) | peak GPU memory (GiB) | recompilations | dpo_loss | reward accuracy "
      "| margin (nats/voxel) | round (s) |")
print("|---|---|---|---|---|---|---|---|")
for trainer in ("nnUNetTrainerBenchmarkBaseline", "nnUNetTrainerMAPO"):
    fold = glob.glob(os.path.join(results, "*", f"{trainer}__nnUNetPlans__3d_fullres", "fold_0"))[0]
    log = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)["logging"]
    epochs = [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])][2:]
    per_iteration = sum(epochs) / len(epochs) / iterations
    gpu = read_peak_gpu_memory(fold)
    with open(os.path.join(work, f"{trainer}.log"), errors="replace") as handle:
        recompiles = handle.read().count("Recompiling function")
    mapo = lambda key: " / ".join(f"{v:.4f}" for v in log.get(key, [])[2:]) or "-"  # noqa: E731
    print(f"| {trainer} | {per_iteration:.3f} | {gpu / 2**30 if gpu else math.nan:.2f} | {recompiles} | "
          f"{mapo('mapo_dpo_loss')} | {mapo('mapo_reward_accuracy')} | {mapo('mapo_margin_nats')} | "
          f"{mapo('mapo_regen_seconds')} |")
PYTHON
stage report
echo "total: $(( $(date +%s) - START )) s"
