// Package onnxpb holds the Go types generated from ONNX's official
// onnx.proto (ONNX 1.12, IR version 8), committed so that builds need
// neither protoc nor Python.
package onnxpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go_opt=Monnx.proto=github.com/transformaly/transformaly/models/onnxpb onnx.proto
