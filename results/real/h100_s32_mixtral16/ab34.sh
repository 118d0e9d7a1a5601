# A/B/C of decode-restart host paths (session 34; not yet run: no device was lent), qllm_catchup on the 16-layer
# Mixtral, same traces, arms in turn. An arm with a folder .whl/arms/<arm>/ is the tree with that folder copied over it;
# any other arm is the tree as is. Ready it from the repository root (main):
#   cp results/real/h100_s32_mixtral16/ab34.sh .whl/; mkdir -p .whl/arms/base/real .whl/arms/both/real
#   for f in engine pending server graphs lanes; do git show 66f1ab3:real/$f.py > .whl/arms/base/real/$f.py; done
#   for f in engine pending; do git show wip/restart-gather:real/$f.py > .whl/arms/both/real/$f.py; done
# base: decode restarts claim the urgent lane and join back (before d0db29a); lane: the tree (they never claim it);
# both: also the placeholder fill as one gather (branch wip/restart-gather). Then, on nvidia-h100-x1, carry [".whl"]:
#   timeout -k 10 400 env NAME=ab34 ARMS="base lane both" RATES=30 TOTAL=300 bash .whl/ab34.sh
# and, on the CPU: python -m real.starttrace ab34/<arm>_0 (per arm), python -m real.report ab34/<arm>_0 --reaction.
# Env: NAME RATES SEED LAYERS KVRES TOTAL RUNTMO ARMS MODEL POLICY DEV DTYPE SLOTS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1
N=${NAME:-ab34}; R=/tmp/$N; mkdir -p $R; trap 'tar czf $OUT/$N.tgz -C $R . 2>/dev/null; exit 1' TERM
echo "tree $(cat .whl/rev) layers ${LAYERS:-16} rates ${RATES:-12,30} seed ${SEED:-32} arms ${ARMS:-base lane both}" > $R/info.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $R/info.txt; cat $R/info.txt
S=${SEED:-32}; t0=$(date +%s)
for arm in ${ARMS:-base lane both}; do
  [ $(( $(date +%s)-t0 )) -gt ${TOTAL:-400} ] && break
  D=$PWD
  if [ -d .whl/arms/$arm ]; then
    D=/tmp/tree_$arm; rm -rf $D && mkdir $D && cp -r real policies sim calibrate conf pyproject.toml $D/ && cp -r .whl/arms/$arm/. $D/
  fi
  i=$(ls $R | grep -c "^${arm}_"); O=$R/${arm}_$i
  ( cd $D && PYTHONPATH=/tmp/site:$D timeout -k 5 ${RUNTMO:-200} python3 -m real run -m rate=${RATES:-12,30} policy=${POLICY:-qllm_catchup} seed=$S \
      num_requests=300 workload.output_mode=fixed workload.fixed_output_tokens=32 engine.model=${MODEL:-mixtral-8x7b} \
      engine.num_layers=${LAYERS:-16} engine.device=${DEV:-cuda} engine.dtype=${DTYPE:-bfloat16} engine.num_slots=${SLOTS:-null} engine.max_len=1280 \
      engine.kv_reserve_gib=${KVRES:-12} engine.device_trail=false engine.trace_starts=true hydra.sweep.dir=$O > $O.log 2>&1 )
  echo "$arm rc=$? $(( $(date +%s)-t0 )) s"; grep -h "tokens/s" $O.log
done
tar czf $OUT/$N.tgz -C $R .
ls -la $OUT
