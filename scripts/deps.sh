#!/usr/bin/env bash
# Installs what SignalForge Serve needs, idempotently; fast when all is present.
#
#   scripts/deps.sh run    # ONNX Runtime only (what `make run` needs)
#   scripts/deps.sh test   # also redis-server, PostgreSQL, PyTorch, ONNX test data, protoc, promtool
#
# ONNX Runtime comes from the npm package onnxruntime-node (only its CPU
# shared library is extracted; the package's install scripts never run),
# pinned and checked by sha256. Set SIGNALFORGE_ORT_LIB to use your own
# libonnxruntime.so instead.
set -euo pipefail

ORT_VERSION=1.30.0
ORT_TGZ_SHA256=6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75
ORT_LIB_SHA256=ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEPS="$ROOT/.deps"
ORT_DIR="$DEPS/onnxruntime-$ORT_VERSION"
ORT_LIB="$ORT_DIR/libonnxruntime.so.1"

say() { printf 'deps: %s\n' "$*" >&2; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

ort() {
	if [[ -n "${SIGNALFORGE_ORT_LIB:-}" ]]; then
		[[ -f "$SIGNALFORGE_ORT_LIB" ]] || { say "SIGNALFORGE_ORT_LIB=$SIGNALFORGE_ORT_LIB does not exist"; exit 1; }
		return
	fi
	if [[ -f "$ORT_LIB" && "$(sha "$ORT_LIB")" == "$ORT_LIB_SHA256" ]]; then
		return
	fi
	command -v npm >/dev/null || { say "npm is needed to fetch ONNX Runtime (apt-get install npm), or set SIGNALFORGE_ORT_LIB"; exit 1; }
	say "fetching ONNX Runtime $ORT_VERSION (npm package onnxruntime-node, CPU library only)…"
	local tmp
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' RETURN
	(cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_VERSION" >/dev/null)
	local tgz="$tmp/onnxruntime-node-$ORT_VERSION.tgz"
	[[ "$(sha "$tgz")" == "$ORT_TGZ_SHA256" ]] || { say "checksum mismatch for $tgz"; exit 1; }
	tar -xzf "$tgz" -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
	[[ "$(sha "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1")" == "$ORT_LIB_SHA256" ]] || { say "checksum mismatch for libonnxruntime.so.1"; exit 1; }
	mkdir -p "$ORT_DIR"
	mv "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$ORT_LIB.tmp"
	mv "$ORT_LIB.tmp" "$ORT_LIB"
	say "ONNX Runtime installed at $ORT_LIB"
}

apt_pkgs() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return
	if [[ "$(id -u)" != 0 ]]; then
		say "missing Debian packages: ${missing[*]}"
		say "install them with: sudo apt-get install -y ${missing[*]}"
		exit 1
	fi
	say "installing Debian packages: ${missing[*]} (PyTorch is ~150 MB; about a minute)…"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

case "${1:-run}" in
run) ort ;;
test)
	ort
	apt_pkgs redis-server postgresql python3-torch python3-onnx libopenblas0 libonnx-testdata libonnx-dev protobuf-compiler prometheus
	;;
*) say "usage: $0 run|test"; exit 2 ;;
esac
