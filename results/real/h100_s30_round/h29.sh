# H100 round on the final tree (Qwen3-30B-A3B bf16, lean attention on by default): fcfs/qllm/qllm_catchup at 8/18/28 req/s,
# seed 27 (session 27's round: the same traces, lean off then), under the stall watchdog (real.sweepwatch)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
REV=$(cat .whl/revC); cd .whl/snapC || exit 1  # a snapshot of the commit (the tree may change meanwhile)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
R=/tmp/h29; mkdir -p $R; trap 'tar czf $OUT/h29.tgz -C $R . 2>/dev/null; ls -la $OUT; exit 1' TERM; echo "tree $REV" > $R/info.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $R/info.txt; cat $R/info.txt
( while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader)"; sleep 3; done ) > $R/gpu_util.log 2>&1 &
W=$!
S=${SEED:-27}
python3 -m real.sweepwatch --out $R/s$S --limit ${LIMIT:-60} --build ${BUILD:-60} --total ${TOTAL:-330} \
  --sweep rate=${RATES:-8,18,28} policy=${POLICIES:-fcfs,qllm,qllm_catchup} --fixed seed=$S num_requests=300 workload.output_mode=fixed \
  workload.fixed_output_tokens=32 engine.model=qwen3-moe-30b-a3b engine.device=cuda engine.dtype=bfloat16 engine.num_slots=null \
  engine.max_len=1280 engine.kv_reserve_gib=12 engine.device_trail=false
grep -h "tokens/s" $R/s$S/proc_*.log
kill $W
tar czf $OUT/h29.tgz -C $R .
ls -la $OUT
