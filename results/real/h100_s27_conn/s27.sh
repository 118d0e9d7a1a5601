# H100 (Qwen3-30B-A3B bf16, qllm_catchup, 300 requests): does the stall still come with graphs captured on their replay
# streams? The workspace probe first, then sweeps under the stall watchdog. RUNS="seed:rates:carry_decode arms:nvidia-smi sampling (1/0):CUDA_DEVICE_MAX_CONNECTIONS ..."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
REV=$(cat .whl/rev); cd .whl/snap || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
R=/tmp/s27; mkdir -p $R; trap 'tar czf $OUT/s27.tgz -C $R . 2>/dev/null; ls -la $OUT; exit 1' TERM; echo "tree $REV" > $R/info.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $R/info.txt; cat $R/info.txt
sampler() { ( while true; do echo "$(date +%s.%N) $(nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader)"; sleep 3; done ) >> $R/gpu_util_$1.log 2>&1 & W=$!; }
if [ "${WS:-1}" = 1 ]; then
  t0=$(date +%s)
  timeout -k 5 ${WSTMO:-150} python3 -m real.workspacecheck --seconds ${WSS:-10} --repeats ${WSR:-1} --grace 20 2>&1 | tee $R/workspacecheck.txt
  echo "workspacecheck $(( $(date +%s)-t0 )) s"
fi
for run in ${RUNS:-13:28,28:false,true 15:28,28:false,true}; do
  IFS=: read S RATES ARMS SMI CONN <<< "$run"
  W=; [ "${SMI:-1}" = 1 ] && sampler s$S
  env ${CONN:+CUDA_DEVICE_MAX_CONNECTIONS=$CONN} python3 -m real.sweepwatch --out $R/s${S}_smi${SMI:-1}_conn${CONN:-8} --limit ${LIMIT:-60} --build ${BUILD:-60} --total ${TOTAL:-170} \
    --sweep rate=$RATES engine.carry_decode=$ARMS --fixed seed=$S policy=qllm_catchup num_requests=300 \
    workload.output_mode=fixed workload.fixed_output_tokens=32 engine.model=qwen3-moe-30b-a3b engine.device=cuda \
    engine.dtype=bfloat16 engine.num_slots=null engine.max_len=1280 engine.kv_reserve_gib=12 engine.device_trail=${TRAIL:-false}
  [ -n "$W" ] && kill $W
done
grep -h "tokens/s" $R/s*/proc_*.log
tar czf $OUT/s27.tgz -C $R .
ls -la $OUT
