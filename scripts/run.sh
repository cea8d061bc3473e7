#!/usr/bin/env bash
# `make run` (after `make deps build`): until the server lands, the most
# useful command on embedded defaults is a benchmark of a demo model that
# signalforge builds itself (a 100-50-10 MLP), in ONNX Runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
export SIGNALFORGE_ROOT="${SIGNALFORGE_ROOT:-$PWD}"
echo "signalforge bench --demo: ONNX Runtime on a demo 100-50-10 MLP, one call at a time"
echo
exec bin/signalforge bench --demo --batch 1,8,32,128 --duration "${SIGNALFORGE_BENCH_DURATION:-1s}"
