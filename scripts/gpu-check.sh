#!/usr/bin/env bash
# GPU check: run the detector on CUDA and TensorRT when present, check its
# scores against the CPU provider, and print the benchmark table. Runs on
# any NVIDIA box, with no network, from a tree where `make gpu-deps` was
# run, or with the parts `make gpu-carry` writes (no Go needed then), or
# with TRANSFORMALY_ORT_LIB and TRANSFORMALY_PROVIDER_LIBRARY set by hand.
# The test binaries need only libonnxruntime (no OpenCV).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/transformaly-gpu-check}
mkdir -p "$out"

gpu_dir=.deps/onnxruntime-gpu
# On a device machine the GPU files and prebuilt test binaries travel as
# parts of one xz tar (make gpu-carry); xz, or else Python's lzma, unpacks
# them.
carry=.deps/gpu-carry
if ls "$carry"/gpu.tar.xz.part-* >/dev/null 2>&1 && [ ! -e "$carry/bin/detector.test" ]; then
  if command -v xz >/dev/null; then
    cat "$carry"/gpu.tar.xz.part-* | xz -d | tar -xf - -C .deps
  else
    cat "$carry"/gpu.tar.xz.part-* | python3 -c 'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(".deps")'
  fi
fi
export TRANSFORMALY_ORT_LIB=${TRANSFORMALY_ORT_LIB:-$(ls "$gpu_dir"/libonnxruntime.so* 2>/dev/null | head -1)}
export TRANSFORMALY_PROVIDER_LIBRARY=${TRANSFORMALY_PROVIDER_LIBRARY:-$(ls "$gpu_dir"/libonnxruntime_providers_{cuda,tensorrt}.so 2>/dev/null | paste -sd, -)}
if [ -z "$TRANSFORMALY_ORT_LIB" ]; then
  echo "no GPU-capable ONNX Runtime: run make gpu-deps, or set TRANSFORMALY_ORT_LIB" >&2
  exit 1
fi
# The provider libraries load their neighbours (providers_shared, CUDA and
# cuDNN libraries from the Python environment of the box, when present).
extra=$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
dirs = set()
for base in site.getsitepackages():
    for lib in glob.glob(os.path.join(base, "nvidia", "*", "lib")):
        dirs.add(lib)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$gpu_dir${extra:+:$extra}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"

bin=$carry/bin # prebuilt, where no Go is at hand
if command -v go >/dev/null; then
  bin=$out/bin
  go test -c -o "$bin/detector.test" ./detector
  go build -o "$bin/benchreport" ./internal/benchreport
fi

echo "== scores and a training step on GPU providers against CPU"
TRANSFORMALY_GPU=1 "$bin/detector.test" -test.run 'TestGPU' -test.v 2>&1 | tee "$out/gpu-test.txt" | grep -E '^(=== RUN|--- |    |PASS|FAIL|ok)' || true

echo "== benchmarks (ViT-B/16 and ViT-S/16 at 224, batch 1/8/32)"
TRANSFORMALY_BENCH_PROVIDERS=${TRANSFORMALY_BENCH_PROVIDERS:-cpu,cuda,tensorrt} \
  "$bin/detector.test" -test.run '^$' -test.bench 'Graphs/ViT-[SB]16-224/detector/(cuda|tensorrt)' -test.benchtime 20x -test.timeout 8m \
  2>/dev/null | tee "$out/bench.txt" | grep -E '^Benchmark' || true
"$bin/benchreport" -json "$out/bench.json" < "$out/bench.txt"
