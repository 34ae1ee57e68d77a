module github.com/transformaly/transformaly

go 1.26.8

require (
	github.com/spf13/pflag v1.1.0
	github.com/yalue/onnxruntime_go v1.35.0
	gocv.io/x/gocv v0.32.0
	google.golang.org/protobuf v1.36.12
)

require gonum.org/v1/gonum v0.17.0
