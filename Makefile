# SignalForge Serve. The documented commands are `make run` and `make test`;
# both install what is missing first (scripts/deps.sh), quickly when present.

GO        ?= go
BIN       := bin/signalforge
GOFLAGS   ?=
# What `make build` stamps into the binary (GET /v2, signalforge_build_info).
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
BUILDINFO := github.com/signalforge/signalforge/internal/buildinfo
LDFLAGS   := -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT) -X $(BUILDINFO).date=$(BUILD_DATE)
export SIGNALFORGE_ROOT := $(CURDIR)

.PHONY: all deps deps-test build run test vet lint fmt-check generate-check bench clean

all: build

deps:
	@scripts/deps.sh run

deps-test:
	@scripts/deps.sh test

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/signalforge

run: deps build
	@scripts/run.sh

vet:
	$(GO) vet ./...

# staticcheck is pinned as a tool in go.mod.
lint:
	$(GO) tool staticcheck ./...

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

# The committed ONNX protobuf bindings must be exactly what go generate makes.
generate-check:
	@tmp="$$(mktemp -d)"; cp onnx/onnx.pb.go "$$tmp/"; \
	( cd onnx && $(GO) generate . ); \
	if ! cmp -s onnx/onnx.pb.go "$$tmp/onnx.pb.go"; then \
		echo "onnx/onnx.pb.go differs from go generate output"; cp "$$tmp/onnx.pb.go" onnx/onnx.pb.go; exit 1; fi; \
	rm -rf "$$tmp"

test: deps-test vet lint fmt-check generate-check
	$(GO) test -count=1 -timeout 9m ./...
	$(GO) test -count=1 -race -timeout 5m ./api/... ./batch/... ./cache/... ./route/... ./registry/... ./manager/... ./server/...

bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...

clean:
	rm -rf bin
