#!/bin/bash
# Device call 5 (H100): the rest of the GPU protocol (facekd-dev), rows run side by side.
# Each runner process has its own results file and runs folder; the ResNet-27 teacher
# (and student5_alone) are trained once and shared by symbolic links.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
if [ -z "${RP:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=$PWD:/tmp/site
  RP="python3 eval/reproduce_paper.py"
fi
L=$OUT/log.txt; T0=$(date +%s); END=$(( T0 + ${TOTAL_S:-215} ))
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
  lscpu | grep -E 'Model name' ; python3 -c "import torch, facenet_pytorch; print('torch', torch.__version__)"; } 2>&1 | tee $L
R=/tmp/res; G=/tmp/lg; mkdir -p $R $G
grep -v '"table": "teachers"' docs/results/facekd-dev.jsonl > $R/base.jsonl
NB=$(wc -l < $R/base.jsonl)
job() {  # name budget_minutes [link_prereq_from] -- runner args
  local name=$1 budget=$2 link=$3; shift 4
  mkdir -p /tmp/runs_$name
  [ -n "$link" ] && ln -sfn $link /tmp/runs_$name/$(basename $link)
  cp $R/base.jsonl $R/$name.jsonl
  echo "start $name at $(( $(date +%s)-T0 )) s: $*" >> $L
  timeout $(( END - $(date +%s) )) $RP --protocol facekd-dev --seeds 1 --budget-minutes $budget \
    --runs /tmp/runs_$name --results $R/$name.jsonl --report $R/$name.md \
    --set 'data.train=[.carry/dev_train_q85.fkpack]' --set eval.lfw=.carry/lfw_pairs_q85.fkpack \
    --set train.compile=false --set eval.every=40 "$@" > $G/$name.log 2>&1
  echo "end $name rc $? at $(( $(date +%s)-T0 )) s" >> $L
}
gate() {  # wait until log $1 shows a line matching $2
  until grep -q "$2" $G/$1.log 2>/dev/null; do
    [ $(date +%s) -ge $(( END - 120 )) ] && return 1; sleep 2; done
}
job c_def 2 "" -- --tables C --row Defective &
job b_r37 2 "" -- --tables B --row "resnet37_c10 alone" &
job b_irv1 2 "" -- --tables B --row "inception_resnet_v1 alone" &
wait
echo "== all done at $(( $(date +%s)-T0 )) s" >> $L
for f in $R/*.jsonl; do [ $f = $R/base.jsonl ] || tail -n +$((NB + 1)) $f; done > $OUT/new.jsonl
for f in $G/*.log; do echo "##### $f"; grep -v "^step" $f | tail -60; done > $OUT/logs.txt
grep -h "^step" $G/*.log | tail -5 >> $OUT/logs.txt
cat $L; wc -l $OUT/new.jsonl
