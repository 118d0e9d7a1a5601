# A/B of the start path's host changes since session 33 (sessions 34-35; not yet run: no device was lent), qllm_catchup on
# the 16-layer Mixtral, same traces, arms in turn. An arm with a folder .whl/arms/<arm>/ is the tree with that folder
# copied over it; any other arm is the tree as is. Ready it from the repository root (main):
#   cp results/real/h100_s32_mixtral16/ab35.sh .whl/; rm -rf .whl/arms; mkdir -p .whl/arms/{base,lane,both}/real
#   for f in engine pending server graphs lanes layout; do git show 66f1ab3:real/$f.py > .whl/arms/base/real/$f.py; done
#   git show 926a904:real/layout.py > .whl/arms/lane/real/layout.py
#   for f in engine pending; do git show wip/restart-gather:real/$f.py > .whl/arms/both/real/$f.py; done
# base: before both changes (decode restarts claim the urgent lane and join back); lane: they never claim it (d0db29a),
# the old layout; main: the tree (also real.layout's short paths, 06c6a98); both: the tree and the placeholder fill
# as one gather (branch wip/restart-gather). Then, on nvidia-h100-x1, carry [".whl"]:
#   timeout -k 10 560 env NAME=ab35 ARMS="base lane main both" RATES=30 TOTAL=360 bash .whl/ab35.sh   (timeout_s 590)
# and, on the CPU: python -m real.starttrace ab35/<arm>_0 (per arm), python -m real.report ab35/<arm>_0 --reaction.
# First (TESTS=1, the default), the engine's tests on the device (QLLM_TEST_DEVICE: fp32 equality with HF, graphs,
# carried and pending tokens), from pytest wheels in .whl/test (`pip download --only-binary=:all: --python-version 3.12
# -d .whl/test pytest`), at most TESTTMO s: the layout's short paths (06c6a98) have run on a CPU only. Log: gputests.log.
# Env: NAME RATES SEED LAYERS KVRES TOTAL RUNTMO ARMS MODEL POLICY DEV DTYPE SLOTS TESTS TESTTMO
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  $( [ "${TESTS:-1}" = 1 ] && ls .whl/test/*.whl ) || exit 1
export PYTHONUNBUFFERED=1
N=${NAME:-ab35}; R=/tmp/$N; mkdir -p $R; trap 'tar czf $OUT/$N.tgz -C $R . 2>/dev/null; exit 1' TERM
echo "tree $(cat .whl/rev) layers ${LAYERS:-16} rates ${RATES:-12,30} seed ${SEED:-32} arms ${ARMS:-base lane main both}" > $R/info.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $R/info.txt; cat $R/info.txt
S=${SEED:-32}; t0=$(date +%s)
if [ "${TESTS:-1}" = 1 ]; then
  PYTHONPATH=/tmp/site:$PWD QLLM_TEST_DEVICE=${DEV:-cuda} timeout -k 5 ${TESTTMO:-150} python3 -m pytest -p no:cacheprovider \
    tests/test_real_engine.py tests/test_real_carry.py tests/test_real_pending.py tests/test_real_graphs.py > $R/gputests.log 2>&1
  echo "tests rc=$? $(( $(date +%s)-t0 )) s: $(tail -1 $R/gputests.log)"
fi
for arm in ${ARMS:-base lane main both}; do
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
