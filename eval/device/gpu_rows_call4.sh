#!/bin/bash
# Device call 4 (H100, 2026-11-26; run from the repo root with the packs in .carry/ and facenet-pytorch wheels in .whl/): the rest of the GPU protocol (facekd-dev), rows run side by side.
# Each runner process has its own results file and runs folder; the ResNet-27 teacher
# (and student5_alone) are trained once and shared by symbolic links.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
if [ -z "${RP:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=$PWD:/tmp/site
  RP="python3 eval/reproduce_paper.py"
fi
L=$OUT/log.txt; T0=$(date +%s); END=$(( T0 + ${TOTAL_S:-525} ))
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
job a1 5.5 "" -- --tables A --row "teacher weighting" --row "Hard+Feature" &
job c_rev 5.5 "" -- --tables C --row Reversed &
job c_plain 5.5 "" -- --tables C --row manually --row "label smoothing" --row Defective &
job b_big_alone 5.5 "" -- --tables B --row "densenet121 alone" --row "inception_resnet_v1 alone" &
job b_small_alone 5.5 "" -- --tables B --row "student5 alone" --row "resnet27_c10 alone" --row "resnet37_c10 alone" &
( gate c_rev "== table C" && job c_self 3.5 /tmp/runs_c_rev/student5_alone-seed0 -- --tables C --row self-training ) &
TCH=/tmp/runs_a1/teacher-seed0
if gate a1 "== table A"; then
  job a2 3 $TCH -- --tables A --row "Hard+Soft" &
  job b_big_kd 3 $TCH -- --tables B --row "densenet121 distilled" --row "inception_resnet_v1 distilled" &
  job b_small_kd 3 $TCH -- --tables B --row "student5 distilled" --row "resnet27_c10 distilled" --row "resnet37_c10 distilled" &
else echo "teacher not ready in time" >> $L; fi
wait
echo "== all done at $(( $(date +%s)-T0 )) s" >> $L
for f in $R/*.jsonl; do [ $f = $R/base.jsonl ] || tail -n +$((NB + 1)) $f; done > $OUT/new.jsonl
for f in $G/*.log; do echo "##### $f"; grep -v "^step" $f | tail -60; done > $OUT/logs.txt
grep -h "^step" $G/*.log | tail -5 >> $OUT/logs.txt
cat $L; wc -l $OUT/new.jsonl
