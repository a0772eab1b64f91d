#!/usr/bin/env bash
# Submit a fedunlearn config to a running Ray cluster and fetch its report.
#   deploy/submit.sh simulations/sisa.toml http://HEAD_IP:8265 [/mnt/fedunlearn] [--set key=value ...]
# Same as: fedunlearn submit CONFIG --address ADDRESS --storage STORAGE
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: deploy/submit.sh CONFIG ADDRESS [STORAGE] [--set key=value ...]}
address=${2:?usage: deploy/submit.sh CONFIG ADDRESS [STORAGE] [--set key=value ...]}
storage=${3:-/mnt/fedunlearn}
shift $(( $# < 3 ? $# : 3 ))
exec python -m fedunlearn submit "$config" --address "$address" --storage "$storage" "$@"
