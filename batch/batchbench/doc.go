// Package batchbench holds the dynamic batcher's benchmarks against the real
// ONNX Runtime engine (infer/ort). It has no API; it lives apart from
// package batch so that batch and its tests build and run without cgo.
//
//	go test ./batch/batchbench -run '^$' -bench . -benchtime 2000x
package batchbench
