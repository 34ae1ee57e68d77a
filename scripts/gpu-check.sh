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
  if pkg-config --exists opencv4 2>/dev/null; then go build -o "$bin/transformaly" ./cmd/transformaly; fi
fi
# The carried transformaly binary brings the shared libraries OpenCV needs
# (make gpu-carry); they go last on the path, after the box's own.
[ -d "$carry/lib" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$carry/lib"

echo "== scores and a training step on GPU providers against CPU"
# One process per test: a provider that crashes the process takes one
# test down, not the ones after it.
: >"$out/gpu-test.txt"
for t in $("$bin/detector.test" -test.list '^TestGPU'); do
  TRANSFORMALY_GPU=1 "$bin/detector.test" -test.run "^$t\$" -test.v 2>&1 | tee -a "$out/gpu-test.txt" \
    | grep -E '^(=== RUN|--- |    |PASS|FAIL|ok|prefix of|SIGSEGV|signal arrived)' || true
done

if [ "${GPU_CHECK_BENCH:-1}" = 1 ]; then # 0 skips them (a rerun of the rest)
  echo "== benchmarks (ViT-B/16 and ViT-S/16 at 224, batch 1/8/32)"
  TRANSFORMALY_BENCH_PROVIDERS=${TRANSFORMALY_BENCH_PROVIDERS:-cpu,cuda,tensorrt} \
    "$bin/detector.test" -test.run '^$' -test.bench 'Graphs/ViT-[SB]16-224/detector/(cuda|tensorrt)' -test.benchtime 20x -test.timeout 8m \
    2>/dev/null | tee "$out/bench.txt" | grep -E '^Benchmark' || true
  "$bin/benchreport" -json "$out/bench.json" < "$out/bench.txt"
fi

# The product's own paths on the GPU: doctor, a fit and the daemon. They need
# the transformaly binary (OpenCV decodes images and video).
tfy=$bin/transformaly
if [ ! -x "$tfy" ]; then
  echo "== no transformaly binary (needs OpenCV to build, or make gpu-carry): fit and daemon not checked"
  exit 0
fi
echo "== doctor"
"$tfy" doctor 2>&1 || true
"$tfy" doctor --provider-library "$TRANSFORMALY_PROVIDER_LIBRARY" 2>&1 || true

work=${TMPDIR:-/tmp}/transformaly-gpu-line
rm -rf "$work" && mkdir -p "$work"
provider=${GPU_CHECK_PROVIDER:-cuda}
images=${GPU_CHECK_FIT_IMAGES:-500}
epochs=${GPU_CHECK_FIT_EPOCHS:-10}
vit=(${GPU_CHECK_VIT:---dim 768 --depth 12 --heads 12 --patch 16 --image-size 224})
size=${vit[-1]}
# The GPU package's core library is a CPU build: its providers come as
# plugins (the EP-device route), which fit and the daemon are given.
plugin=()
if [ "$provider" != cpu ] && [ -e "$gpu_dir/libonnxruntime_providers_$provider.so" ]; then
  plugin=(--provider-library "$gpu_dir/libonnxruntime_providers_$provider.so")
fi
echo "== fit: ViT ${vit[*]}, $images images, $epochs epochs, provider $provider"
"$tfy" random-vit "${vit[@]}" --out "$work/teacher.safetensors" 2>&1 | tail -1
"$tfy" synth --out "$work/normal" --count "$images" --image-size "$size" 2>&1 | tail -1
start=$(date +%s.%N)
if "$tfy" fit --teacher "$work/teacher.safetensors" --normal "$work/normal" --out "$work/line.tfy" \
    --epochs "$epochs" --patience 0 --provider "$provider" "${plugin[@]}" >"$out/fit.log" 2>&1; then
  python3 -c "print('fit took %.1f s' % ($(date +%s.%N) - $start))"
else
  echo "fit FAILED:"; grep -m3 -E 'SIGSEGV|signal|panic|level=ERROR|Error' "$out/fit.log" || tail -5 "$out/fit.log"
  # The daemon's check still needs a bundle: a short fit on the CPU.
  "$tfy" synth --out "$work/normal-cpu" --count 64 --image-size "$size" 2>&1 | tail -1
  "$tfy" fit --teacher "$work/teacher.safetensors" --normal "$work/normal-cpu" --out "$work/line.tfy" \
    --epochs 1 --patience 0 --provider cpu >"$out/fit-cpu.log" 2>&1 || { echo "CPU fit failed too:"; tail -5 "$out/fit-cpu.log"; exit 1; }
  echo "(a 1-epoch CPU fit on 64 images made the daemon's bundle)"
fi
grep -E 'provider|epoch finished|cache|threshold' "$out/fit.log" | cut -c1-400 | tail -16 || true

echo "== daemon: cameras sharing the bundle, provider $provider (video files read unpaced)"
"$tfy" synth --video "$work/line.avi" --count 20 --image-size 640 2>&1 | tail -1
metrics_port=19108
for cams in ${GPU_CHECK_CAMERAS:-4 16}; do
  cfg=$work/daemon-$cams.yaml
  {
    echo "cameras:"
    for i in $(seq 1 "$cams"); do echo "  - {name: cam$i, source: line.avi, model: line.tfy, loop: true}"; done
    echo "detector: {provider: $provider, max_batch: 16, batch_wait: 5ms${plugin:+, provider_library: \"$PWD/${plugin[1]}\"}}"
    echo "mqtt: {broker: embedded, embedded_address: \"127.0.0.1:18831\", stats_interval: 5s}"
    echo "metrics: {address: \"127.0.0.1:$metrics_port\"}"
    echo "state_directory: state-$cams"
    echo "cache_directory: cache"
  } >"$cfg"
  "$tfy" run --config "$cfg" >"$work/daemon-$cams.log" 2>&1 &
  pid=$!
  scored() { python3 -c '
import re, sys, urllib.request
t = urllib.request.urlopen("http://127.0.0.1:'$metrics_port'/metrics", timeout=5).read().decode()
print(sum(float(m) for m in re.findall(r"^transformaly_frames_scored_total\{[^}]*\} (\S+)", t, re.M)))'; }
  ready=0
  for _ in $(seq 1 120); do
    if python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:'$metrics_port'/readyz", timeout=2)' 2>/dev/null; then ready=1; break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 1
  done
  if [ $ready = 1 ]; then
    sleep 5 # past warm-up
    a=$(scored); sleep 15; b=$(scored)
    python3 -c "print('$cams cameras: %.1f frames/s scored' % (($b - $a) / 15))"
    python3 -c '
import re, urllib.request
t = urllib.request.urlopen("http://127.0.0.1:'$metrics_port'/metrics", timeout=5).read().decode()
for name in ("transformaly_inference_ms_p50", "transformaly_inference_ms_p99"):
    v = [float(m) for m in re.findall(r"^" + name + r"\{[^}]*\} (\S+)", t, re.M)]
    print("  %s (worst camera): %.1f" % (name, max(v) if v else float("nan")))'
  else
    echo "$cams cameras: daemon not ready:"; tail -20 "$work/daemon-$cams.log"
  fi
  kill -TERM $pid 2>/dev/null; wait $pid || true
  grep -E 'level=(WARN|ERROR)' "$work/daemon-$cams.log" | cut -c1-300 | sort | uniq -c | sort -rn | head -5 || true
  cp "$work/daemon-$cams.log" "$out/"
done
