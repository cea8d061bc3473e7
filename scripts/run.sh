#!/usr/bin/env bash
# `make run` (after `make deps build`): start the server on embedded defaults:
# the registry folder ./models (a demo model is registered when it is empty),
# the in-memory prediction cache, port 8080 (SIGNALFORGE_ADDR to change).
# Stop it with Ctrl-C: it drains in-flight requests and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
export SIGNALFORGE_ROOT="${SIGNALFORGE_ROOT:-$PWD}"
ADDR="${SIGNALFORGE_ADDR:-127.0.0.1:8080}"
PORT="${ADDR##*:}"
# Admin: with SIGNALFORGE_ADMIN_TOKEN set it needs that token; otherwise,
# on a loopback address, it is opened without a token for this machine only
# (--admin-open-loopback); on any other address it stays closed.
ADMIN_FLAGS=()
if [[ -n "${SIGNALFORGE_ADMIN_TOKEN:-}" ]]; then
  ADMIN_MSG="admin API: bearer token from SIGNALFORGE_ADMIN_TOKEN"
else
  case "${ADDR%:*}" in
    127.*|localhost|"[::1]")
      ADMIN_FLAGS=(--admin-open-loopback)
      ADMIN_MSG="admin API: OPEN WITHOUT A TOKEN to this machine only (--admin-open-loopback; development use)" ;;
    *)
      ADMIN_MSG="admin API: closed (set SIGNALFORGE_ADMIN_TOKEN to use it on ${ADDR})" ;;
  esac
fi
F='"rsi_14": 65.0, "macd": 0.5, "macd_signal": 0.4, "bb_width": 0.08, "volume_z": 1.3, "ret_1d": 0.004, "ret_5d": 0.012, "atr_14": 2.1'
cat <<MSG
signalforge serve on http://${ADDR} (registry ./models, in-memory cache).
${ADMIN_MSG}
Try, in another terminal:

  curl -s localhost:${PORT}/v1/models/forecast_mlp/predict -d '{"request_id": "req_123", "ticker": "AAPL", "horizon": 5, "features": {${F}}}'
  curl -s localhost:${PORT}/v2/models/forecast_mlp/infer -d '{"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [65, 0.5, 0.4, 0.08, 1.3, 0.004, 0.012, 2.1]}]}'
  curl -s localhost:${PORT}/v1/models
  bin/signalforge predict --server http://${ADDR} --model forecast_mlp --ticker AAPL --horizon 5 -f rsi_14=65 -f macd=0.5 -f macd_signal=0.4 -f bb_width=0.08 -f volume_z=1.3 -f ret_1d=0.004 -f ret_5d=0.012 -f atr_14=2.1

MSG
exec bin/signalforge serve --addr "$ADDR" "${ADMIN_FLAGS[@]}" "$@"
