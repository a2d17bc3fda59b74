#!/usr/bin/env bash
# GPU check of nnunetv2_mapo (docs/usage.md, "On a GPU"): nnUNetTrainer against nnUNetTrainerMAPO on the hippocampus
# 3d_fullres with torch.compile on, a preference round included. Prints seconds per iteration, peak GPU memory, the
# number of compilations and the MAPO metrics of both. About 8 minutes on one recent GPU (set-up not included).
#
#   scripts/gpu_check.sh [RAW_DATASET]   # default: ../shared/data/Dataset004_Hippocampus (nnU-Net raw format)
#
# Works on a copy of the dataset in a temporary folder; writes nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
RAW=${1:-../shared/data/Dataset004_Hippocampus}
test -d "$RAW" || { echo "gpu_check: no raw dataset at $RAW (give the path of Dataset004_Hippocampus)" >&2; exit 2; }
test -x .venv/bin/python || make setup
PY=.venv/bin/python
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device')"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PATH="$PWD/.venv/bin:$PATH" nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed"
export nnUNet_results="$WORK/results" nnUNet_compile=1 nnUNet_def_n_proc=4 nnUNet_n_proc_DA=8
mkdir -p "$nnUNet_raw" && cp -r "$RAW" "$nnUNet_raw/"
# the benchmark's nnUNetTrainer with a budget is visible to nnU-Net's lookup in this script's processes only
nnUNet_extTrainer=$($PY -c "import os; from nnunetv2_mapo.benchmark.lookup import with_benchmark_trainers as w; \
print(w(os.environ)['nnUNet_extTrainer'])")
export nnUNet_extTrainer
nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres -np 4 > "$WORK/plan.log" 2>&1

# 4 epochs of 100 iterations: warm-up 2 epochs, then a round at the start of epochs 2 and 3.
BUDGET='{"num_epochs": 4, "num_iterations_per_epoch": 100, "num_val_iterations_per_epoch": 10'
for TRAINER in nnUNetTrainerBenchmarkBaseline nnUNetTrainerMAPO; do
  CONFIG="$BUDGET}"
  [ "$TRAINER" = nnUNetTrainerMAPO ] && CONFIG="$BUDGET, \"mapo_warmup_epochs\": 2, \"mapo_regen_every\": 1}"
  echo "== $TRAINER"
  # TORCH_LOGS=recompiles prints one line per recompilation of a compiled function
  nnUNet_mapo_config="$CONFIG" TORCH_LOGS=recompiles nnUNetv2_train 4 3d_fullres 0 -tr "$TRAINER" \
    > "$WORK/$TRAINER.log" 2>&1 || { tail -40 "$WORK/$TRAINER.log"; exit 1; }
done

$PY - "$nnUNet_results" "$WORK" <<'PYTHON'
import glob, math, os, sys
import torch
from nnunetv2_mapo.training.gpu_memory import read_peak_gpu_memory

results, work = sys.argv[1], sys.argv[2]
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
print("| trainer | s/iteration (epochs 2-3) | peak GPU memory (GiB) | recompilations | dpo_loss | reward accuracy "
      "| reward margin | round (s) |")
print("|---|---|---|---|---|---|---|---|")
for trainer in ("nnUNetTrainerBenchmarkBaseline", "nnUNetTrainerMAPO"):
    fold = glob.glob(os.path.join(results, "*", f"{trainer}__nnUNetPlans__3d_fullres", "fold_0"))[0]
    log = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)["logging"]
    epochs = [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])][2:]
    per_iteration = sum(epochs) / len(epochs) / 100
    gpu = read_peak_gpu_memory(fold)
    with open(os.path.join(work, f"{trainer}.log"), errors="replace") as handle:
        recompiles = handle.read().count("Recompiling function")
    mapo = lambda key: " / ".join(f"{v:.4f}" for v in log.get(key, [])[2:]) or "-"  # noqa: E731
    print(f"| {trainer} | {per_iteration:.3f} | {gpu / 2**30 if gpu else math.nan:.2f} | {recompiles} | "
          f"{mapo('mapo_dpo_loss')} | {mapo('mapo_reward_accuracy')} | {mapo('mapo_reward_margin')} | "
          f"{mapo('mapo_regen_seconds')} |")
PYTHON
