#!/usr/bin/env bash
# Times on one GPU against the same runs on CPU, as one table: the audit ensemble (4 models
# per ensemble, 2 methods), SISA (4 shards at 0.25 GPU each) and AMUN's fan-out.
# Under ten minutes on one GPU machine (16 cores):
#   bash benchmarks/gpu.sh                # GPU runs, then the same on CPU
#   bash benchmarks/gpu.sh --cpu-only     # the CPU half only (no GPU needed)
#   bash benchmarks/gpu.sh --cpu-only --quick   # tiny sizes: checks the script itself in ~minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/fedunlearn-gpu}
CPU_ONLY=0; QUICK=0
for arg in "$@"; do
  case "$arg" in
    --cpu-only) CPU_ONLY=1 ;;
    --quick) QUICK=1 ;;
    *) echo "usage: $0 [--cpu-only] [--quick]" >&2; exit 2 ;;
  esac
done
if [ "$CPU_ONLY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible to torch; run with --cpu-only" >&2; exit 2
fi

if [ "$QUICK" = 1 ]; then
  AUDIT_SIZE=(--set data.train_size=700 --set data.val_size=100 --set data.test_size=300 --set train.epochs=1 --set audit.models=3)
  SISA_SIZE=(--set train.epochs=1 --set methods.sisa.epochs_per_slice=1)  # its forget indices need all 20,000
  AMUN_SIZE=(--set data.train_size=1000 --set train.epochs=2 --set "experiment.seeds=[0]" --set methods.amun.epochs=1)
else
  AUDIT_SIZE=(--set audit.models=4)
  SISA_SIZE=(--set train.epochs=20 --set methods.sisa.epochs_per_slice=5)
  AMUN_SIZE=(--set "experiment.seeds=[0]")
fi
AUDIT_METHODS=(--set 'audit.methods=["finetune","salun"]' --set 'experiment.methods=["finetune","salun"]')

declare -A SECONDS_OF
run() {  # name device config args...
  local name=$1 device=$2 config=$3; shift 3
  local gpu=0; [ "$device" = cuda ] && gpu=0.25
  local start end
  start=$(date +%s)
  "$PY" -m fedunlearn run "$config" --out "$OUT/$name-$device" --fresh -q "$@" \
      --set "cluster.gpus_per_task=$gpu" > "$OUT/$name-$device.log" 2>&1 \
    || { echo "$name on $device failed; see $OUT/$name-$device.log" >&2; SECONDS_OF[$name-$device]=failed; return; }
  end=$(date +%s)
  SECONDS_OF[$name-$device]=$((end - start))
}
run_audit() {  # the audit's ensembles read [audit.cluster], not [cluster]
  local device=$1 gpu=0; [ "$device" = cuda ] && gpu=0.25
  local start end
  start=$(date +%s)
  "$PY" -m fedunlearn run simulations/audit.toml --out "$OUT/audit-$device" --fresh -q "${AUDIT_SIZE[@]}" \
      "${AUDIT_METHODS[@]}" --set "audit.cluster.gpus_per_task=$gpu" > "$OUT/audit-$device.log" 2>&1 \
    || { echo "audit on $device failed; see $OUT/audit-$device.log" >&2; SECONDS_OF[audit-$device]=failed; return; }
  end=$(date +%s)
  SECONDS_OF[audit-$device]=$((end - start))
}

mkdir -p "$OUT"
devices=(cpu); [ "$CPU_ONLY" = 0 ] && devices=(cuda cpu)
for device in "${devices[@]}"; do
  echo "== $device: audit ensemble"; run_audit "$device"
  echo "== $device: SISA, 4 shards"; run sisa "$device" simulations/sisa.toml "${SISA_SIZE[@]}"
  echo "== $device: AMUN fan-out"; run amun "$device" simulations/amun.toml "${AMUN_SIZE[@]}"
done

printf '\n| run | cuda (s) | cpu (s) |\n|---|---|---|\n'
for name in audit sisa amun; do
  printf '| %s | %s | %s |\n' "$name" "${SECONDS_OF[$name-cuda]:-not run}" "${SECONDS_OF[$name-cpu]:-not run}"
done
echo "(wall seconds of the whole \`fedunlearn run\`, Ray start-up included; logs and reports under $OUT)"
