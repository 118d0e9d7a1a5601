# H100 (Qwen3-30B-A3B bf16): lean attention (engine.lean_attention) on one layer (real.prefillbench), then fcfs
# serving with it off and on, interleaved (fcfs's prefill layers run stepped attention; qllm's replay pass graphs)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
REV=$(cat .whl/rev); cd .whl/snap || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
R=/tmp/l28; mkdir -p $R; trap 'tar czf $OUT/l28.tgz -C $R . 2>/dev/null; ls -la $OUT; exit 1' TERM; echo "tree $REV" > $R/info.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $R/info.txt; cat $R/info.txt
t0=$(date +%s)
timeout -k 5 ${PTMO:-120} python3 -m real.prefillbench --model qwen3-moe-30b-a3b --device cuda --dtype bfloat16 \
  --counts 1 2 4 8 16 32 --out $R/prefillbench.csv 2>&1 | tee $R/prefillbench.txt
echo "prefillbench $(( $(date +%s)-t0 )) s"
python3 -m real.sweepwatch --out $R/s${SEED:-28} --limit ${LIMIT:-60} --build ${BUILD:-60} --total ${TOTAL:-260} \
  --sweep rate=${RATES:-18,28} engine.lean_attention=false,true --fixed seed=${SEED:-28} policy=fcfs num_requests=300 \
  workload.output_mode=fixed workload.fixed_output_tokens=32 engine.model=qwen3-moe-30b-a3b engine.device=cuda \
  engine.dtype=bfloat16 engine.num_slots=null engine.max_len=1280 engine.kv_reserve_gib=12 engine.device_trail=false \
  engine.trace_starts=true
grep -h "tokens/s" $R/s*/proc_*.log
tar czf $OUT/l28.tgz -C $R .
ls -la $OUT
