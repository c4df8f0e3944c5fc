#!/bin/bash
# One device call (`run(command="bash scripts/gpu_quickstart/train.sh", carry=[".devcarry"])`): CUDA
# checks, a speed probe, then a from-scratch quickstart-preset pair sized to the time left (TRAIN_END
# seconds after the start, default 420), validation scoring of every sparse checkpoint by the rule of
# docs/results.md, and the chosen pair packed into $OUT. `.devcarry` comes from prepare.py. Local dry
# run on a CPU: PROBE_STEPS=5 FORCE_STEPS=20 OUT=/tmp/out bash scripts/gpu_quickstart/train.sh
T0=$(date +%s); export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD OMP_NUM_THREADS=1
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi -L; python3 -c "import torch,tokenizers,safetensors,rich,jaxtyping,numpy;print('torch',torch.__version__,torch.cuda.is_available())"
mkdir -p /tmp/py311 && tar -xJf .devcarry/py311.tar.xz -C /tmp/py311 && cp -r .devcarry/cache /tmp/sccache || exit 3
(python3 -m pytest -q -p no:cacheprovider tests/model/test_sparsity.py > $OUT/pytest-sparsity.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest-sparsity.log) &
BS=64; PREC=${PREC:-auto}
TR="python3 -m sparsecircuits train --preset quickstart --sources /tmp/py311 --cache-dir /tmp/sccache --batch-size $BS --seed 0"
probe() { $TR --precision $1 --steps ${PROBE_STEPS:-300} --val-every 0 --ckpt-every 0 --log-every 10 --out /tmp/probe-s > /tmp/probe-s.log 2>&1 & $TR --precision $1 --dense --steps ${PROBE_STEPS:-300} --val-every 0 --ckpt-every 0 --log-every 10 --out /tmp/probe-d > /tmp/probe-d.log 2>&1; a=$?; wait $!; b=$?; return $((a+b)); }
probe $PREC || { log "probe $PREC failed"; tail -n 20 /tmp/probe-s.log /tmp/probe-d.log; PREC=fp32; rm -rf /tmp/probe-*; probe fp32 || { tail -n 30 /tmp/probe-s.log; exit 4; }; }
RATE=$(python3 -c "import json;print(min(json.loads(open(f'/tmp/probe-{x}/metrics.jsonl').read().splitlines()[-1])['tokens_per_s'] for x in 'sd'))")
BUDGET=$(( T0 + ${TRAIN_END:-420} - $(date +%s) ))
STEPS=$(python3 -c "print(max(1000, int($RATE/($BS*128)*$BUDGET*0.92)//1000*1000))"); EV=$((STEPS/10)); [ -n "$FORCE_STEPS" ] && STEPS=$FORCE_STEPS && EV=$((STEPS/2))
log "precision $PREC, probe $RATE tok/s per run, budget ${BUDGET}s -> $STEPS steps, ckpt/val every $EV"
echo "$TR --precision $PREC --steps $STEPS --val-every $EV --ckpt-every $EV --keep-checkpoints 10" > $OUT/command.txt
$TR --precision $PREC --steps $STEPS --val-every $EV --ckpt-every $EV --keep-checkpoints 10 --out /tmp/g-sparse > /tmp/g-sparse.log 2>&1 &
$TR --precision $PREC --dense --steps $STEPS --val-every $EV --ckpt-every $EV --keep-checkpoints 10 --out /tmp/g-dense > /tmp/g-dense.log 2>&1
wait; log "trained"; tail -n 12 /tmp/g-sparse.log /tmp/g-dense.log
mkdir -p /tmp/val
for d in /tmp/g-sparse/checkpoints/step-*; do n=$((10#${d##*step-}))
  timeout 150 python3 -m sparsecircuits tasks $d --n-examples 512 --seed 1 --exclude-seed 0 --exclude-n 256 --json /tmp/val/val-step-$n.json > /tmp/val/val-step-$n.log 2>&1 &
done; wait; log "scored"
CH=$(python3 scripts/gpu_quickstart/choose_checkpoint.py /tmp/val /tmp/g-sparse/metrics.jsonl /tmp/val/choice.json); log "chosen step $CH"
C=$(printf "step-%07d" $CH)
cp /tmp/g-sparse/metrics.jsonl /tmp/val/sparse-metrics.jsonl; cp /tmp/g-dense/metrics.jsonl /tmp/val/dense-metrics.jsonl; cp /tmp/probe-*/metrics.jsonl /tmp/val/ 2>/dev/null
tar -cf $OUT/results.tar -C /tmp val
for x in sparse dense; do tar -cf $OUT/$x.tar --exclude=train_state.safetensors -C /tmp/g-$x/checkpoints $C; done
python3 -c "import json;d=json.load(open('/tmp/val/choice.json'));[print(r['step'],r['val_loss'],len(r['solved']),r['solved']) for r in d['rows']]"
ls -la $OUT; log done
