#!/bin/bash
# Device call (H100/H200): Table A of the GPU protocol (facekd-dev, 40 epochs) with 3 seeds.
# Run from the repo root with the packs in .carry/ (dev_train_q85.fkpack, lfw_pairs_q85.fkpack)
# and the facenet-pytorch wheel in .whl/ (pip download facenet-pytorch==2.5.3 --no-deps -d .whl):
#   carry [".carry", ".whl"]; command: OUT=$OUT bash eval/device/gpu_table_a_seeds.sh
# WORKERS processes share one suite (one runs folder, one results file): the first trains the
# ResNet-27 teacher (about 2 min) while the others wait on its lock, then each takes the next
# run nobody holds. No new run starts after BUDGET_MIN; everything stops at TOTAL_S. The rows
# already in docs/results/facekd-dev.jsonl are skipped; the new lines come back in
# $OUT/new.jsonl (append them to that file; a second call does the rest).
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
if [ -z "${RP:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=$PWD:/tmp/site
  RP="python3 eval/reproduce_paper.py"
fi
WORKERS=${WORKERS:-6}; L=$OUT/log.txt; T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
  lscpu | grep -E 'Model name'; python3 -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee $L
R=/tmp/res.jsonl; G=/tmp/lg; mkdir -p $G /tmp/runs_a
cp docs/results/facekd-dev.jsonl $R; NB=$(wc -l < $R)
for w in $(seq 1 $WORKERS); do
  timeout ${TOTAL_S:-540} $RP --protocol facekd-dev --tables A --seeds 3 --budget-minutes ${BUDGET_MIN:-6} \
    --runs /tmp/runs_a --results $R --report /tmp/table_a.md \
    --set 'data.train=[.carry/dev_train_q85.fkpack]' --set eval.lfw=.carry/lfw_pairs_q85.fkpack \
    --set train.compile=false --set eval.every=40 > $G/w$w.log 2>&1 &
  sleep 3
done
wait
echo "== all done at $(( $(date +%s) - T0 )) s" >> $L
tail -n +$((NB + 1)) $R > $OUT/new.jsonl
for f in $G/*.log; do echo "##### $f"; grep -v "^step" $f | tail -40; done > $OUT/logs.txt
cat $L; wc -l $OUT/new.jsonl
