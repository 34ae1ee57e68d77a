module github.com/transformaly/transformaly

go 1.26.8

require (
	github.com/yalue/onnxruntime_go v1.35.0
	google.golang.org/protobuf v1.36.12
)
