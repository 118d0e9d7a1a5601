# One serving round on the working tree: an optional calibration of prefill stages (CAL=1), then fcfs/qllm/qllm_catchup
# over RATES under the stall watchdog (real.sweepwatch). Env: NAME MODEL LAYERS(null) RATES SEED TOTAL CAL CSTAGES CTMO KVRES MAXLEN
# POLICIES EXTRA (more overrides, as key=value words)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
N=${NAME:-r32}; R=/tmp/$N; mkdir -p $R; trap 'tar czf $OUT/$N.tgz -C $R . 2>/dev/null; ls -la $OUT; exit 1' TERM
echo "tree $(cat .whl/rev) layers ${LAYERS:-null} rates ${RATES:-8,18,28} seed ${SEED:-13}" > $R/info.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $R/info.txt; cat $R/info.txt
( while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader)"; sleep 3; done ) > $R/gpu_util.log 2>&1 &
W=$!
t0=$(date +%s)
if [ "${CAL:-0}" = 1 ]; then
  timeout -k 10 ${CTMO:-150} python3 -m calibrate.measure --model ${MODEL:-mixtral-8x7b} --impls engine \
    --stages ${CSTAGES:-attention_prefill attention_prefill_lean} --no-passes --out $R/cal > $R/cal.log 2>&1
  echo "calibration rc=$? $(( $(date +%s)-t0 )) s"; tail -4 $R/cal.log; ls $R/cal
fi
S=${SEED:-13}
python3 -m real.sweepwatch --out $R/s$S --limit ${LIMIT:-70} --build ${BUILD:-120} --total ${TOTAL:-385} \
  --sweep rate=${RATES:-8,18,28} policy=${POLICIES:-fcfs,qllm,qllm_catchup} --fixed seed=$S num_requests=300 \
  workload.output_mode=fixed workload.fixed_output_tokens=32 engine.model=${MODEL:-mixtral-8x7b} \
  engine.num_layers=${LAYERS:-null} engine.device=cuda engine.dtype=bfloat16 engine.num_slots=null \
  engine.max_len=${MAXLEN:-1280} engine.kv_reserve_gib=${KVRES:-16} engine.device_trail=false ${EXTRA}
grep -h "tokens/s" $R/s$S/proc_*.log
echo "total $(( $(date +%s)-t0 )) s"
kill $W
tar czf $OUT/$N.tgz -C $R .
ls -la $OUT
