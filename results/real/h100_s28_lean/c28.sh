# H100: Qwen3-30B-A3B's unpadded prefill attention without and with the pass's rotary tables made beforehand
# (attention_prefill_varlen, attention_prefill_lean), one run, for calibrate.splice --stage attention_prefill_lean
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
REV=$(cat .whl/revB); cd .whl/snapB || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
echo "tree $REV"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
t0=$(date +%s)
timeout -k 10 ${CTMO:-240} python3 -m calibrate.measure --model ${CALM:-qwen3-moe-30b-a3b} --impls engine \
  --stages attention_prefill_varlen attention_prefill_lean --no-passes --out $OUT/cal > $OUT/cal.log 2>&1
echo "calibration rc=$? $(( $(date +%s)-t0 )) s"; tail -8 $OUT/cal.log; ls -la $OUT $OUT/cal
