#!/bin/bash
# Usage: ABL=OUT SEED=0 bash eval/detector_ablation.sh   (then facekd eval detect --detectors $ABL/s0/*/detector.onnx ... and eval/detector_ablation.py)
# ablation (issue 26): fkdet_s, 4 epochs x 2048 frames of 256 px, seed $SEED; each SPEC 4a term added alone to the labels-only base, then all
cd "$(dirname "$0")/.."
ABL=${ABL:?set ABL to a folder for the runs}
SEED=${SEED:-0}
B="--set train.epochs=4 --set train.frames_per_epoch=2048 --set train.seed=$SEED --set train.threads=1"
run() {  # name config args...
  local name=$1; shift; local cfg=$1; shift
  local R=$ABL/s$SEED/$name
  [ -f $R/detector.onnx ] && return
  local extra=""; [ -f $R/checkpoints/last.pt ] && extra="--resume"
  mkdir -p $ABL/s$SEED
  .venv/bin/facekd distill-detector $cfg --out $R $B "$@" $extra > $R.log 2>&1
}
L=configs/detect/labels_only.yaml
run labels $L
run soft_ce $L --set teacher=yunet --set 'terms=[{name: hard, cls_weight: 0.5}, {name: weighted_soft_ce, weight: 0.5}]'
run bounded $L --set teacher=yunet --set 'terms=[{name: hard}, {name: bounded_reg, weight: 0.5}]'
run hint $L --set teacher=yunet --set 'terms=[{name: hard}, {name: hint, weight: 0.5}]'
run objscaled $L --set teacher=yunet --set 'terms=[{name: hard}, {name: objectness_scaled, weight: 1.0}]'
run objscaled_fmnms $L --set teacher=yunet --set fm_nms=true --set 'terms=[{name: hard}, {name: objectness_scaled, weight: 1.0}]'
run unlabelled $L --set 'data.unlabelled=[celeba-crops]'
run all configs/detect/fkdet_s.yaml
echo "done: $ABL/s$SEED"
