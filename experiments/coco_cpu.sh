#!/usr/bin/env bash
# Real-image CPU experiment (README "Results on real COCO images"):
#   shard the three COCO folders of ../shared/data with 20% of images held out (by image),
#   train the edge-classification model and the regression baseline on the union of the
#   training parts, keep the best checkpoint on held-out metrics, and evaluate both plus the
#   rough-box floor on every held-out part (and on the two web sets, never trained on).
# Usage: experiments/coco_cpu.sh [EDGE_STEPS] [REGRESSION_STEPS]   (defaults 1500 / 1500)
# Resumable: re-running skips finished shards and resumes/skips finished trainings.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SNAPPER_SHARED_DATA:-../shared/data}
PY=${PY:-.venv/bin/python}
EDGE_STEPS=${1:-1500}
REG_STEPS=${2:-1500}
OUT=${OUT:-runs/coco-cpu}
export DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true
[ -f "$DATA/coco128-train/annotations.json" ] || { echo "no $DATA: nothing to do"; exit 0; }

for ds in coco128-train coco-mini tiny-coco; do
  $PY -m snapper.cli shard "$DATA/$ds/annotations.json" "$DATA/$ds/images" "shards/$ds" \
      --val-fraction 0.2 --seed 0 --shard-size 16
done
for ds in raccoon kangaroo; do  # out-of-domain evaluation only (looser boxes than COCO's)
  $PY -m snapper.cli shard "$DATA/$ds/annotations.json" "$DATA/$ds/images" "shards/$ds" --split val --shard-size 32
done

list() { local split=$1; shift; local out=""; for ds in "$@"; do
  for f in shards/$ds/$split-*.tar; do out="$out\"$f\","; done; done; echo "[${out%,}]"; }
TRAIN=$(list train coco128-train coco-mini tiny-coco)
VAL=$(list val coco128-train coco-mini tiny-coco)

common=(--preset cpu --set "data.train_shards=$TRAIN" --set "data.val_shards=$VAL" --set data.val_max_boxes=null
        --set tracking.experiment=snapper-coco-cpu --set tracking.registered_model=snapper-coco-cpu)
$PY -m snapper.cli train "${common[@]}" --set steps="$EDGE_STEPS" --set tracking.run_name=edges --out-dir "$OUT/edges"
$PY -m snapper.cli train "${common[@]}" --set steps="$REG_STEPS" --set model.head=regression \
    --set tracking.registered_model=null --set tracking.run_name=regression --out-dir "$OUT/regression"

# All held-out COCO images at once (the README's headline table), then each set on its own.
$PY -m snapper.cli evaluate --shards shards/coco128-train/val-manifest.json shards/coco-mini/val-manifest.json \
    shards/tiny-coco/val-manifest.json \
    --model "snapper=$OUT/edges/best" --model "regression=$OUT/regression/best" \
    --out-dir "$OUT/eval/coco-all" > "$OUT/eval/coco-all.md" 2>"$OUT/eval/coco-all.log" || { cat "$OUT/eval/coco-all.log"; exit 1; }
echo "== all three COCO folders (held-out images)"; cat "$OUT/eval/coco-all.md"
for ds in coco128-train coco-mini tiny-coco raccoon kangaroo; do
  $PY -m snapper.cli evaluate --shards "shards/$ds" --split val \
      --model "snapper=$OUT/edges/best" --model "regression=$OUT/regression/best" \
      --out-dir "$OUT/eval/$ds" > "$OUT/eval/$ds.md" 2>"$OUT/eval/$ds.log" || { cat "$OUT/eval/$ds.log"; exit 1; }
  echo "== $ds (held-out images)"; cat "$OUT/eval/$ds.md"
done
