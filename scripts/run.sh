#!/usr/bin/env bash
# `make run`: the product on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bin/signalforge help
