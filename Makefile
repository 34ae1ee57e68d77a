# transformaly build, test and dependency targets.
# `make deps` installs only what is missing; `make test` is what CI runs.

SHELL          := /bin/bash
ORT_VERSION    := 1.30.0
ORT_TGZ_SHA256 := 6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75
ORT_LIB_SHA256 := ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23
ORT_DIR        := .deps/onnxruntime
ORT_LIB        := $(ORT_DIR)/libonnxruntime.so.1
APT_PACKAGES   := libopencv-dev libjpeg-dev libavutil-dev mosquitto chromium pkg-config gcc
BIN            := bin/transformaly
# -tags matprofile makes gocv count live Mats, so tests can assert none leak;
# -count=1 because the e2e tests run a binary the test cache cannot see.
GO_TEST_FLAGS  ?= -timeout 25m

.PHONY: all build deps apt-deps ort-lib test bench fuzz vet demo install gpu-deps gpu-carry gpu-check clean FORCE

all: build

build: $(BIN)

$(BIN): deps FORCE
	go build -o $(BIN) ./cmd/transformaly

FORCE:

deps: apt-deps ort-lib

# Debian packages, installed only when one is missing.
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

ort-lib: $(ORT_LIB)

# The CPU ONNX Runtime library, taken from the npm package with `npm pack`
# (never `npm install`: its install script downloads CUDA files from a host
# we cannot reach), checksum-verified before use.
$(ORT_LIB):
	@command -v npm >/dev/null || { echo "npm is needed to fetch ONNX Runtime (apt-get install npm)"; exit 1; }
	rm -rf $(ORT_DIR)/tmp && mkdir -p $(ORT_DIR)/tmp
	cd $(ORT_DIR)/tmp && npm pack --silent onnxruntime-node@$(ORT_VERSION) >/dev/null
	echo "$(ORT_TGZ_SHA256)  $(ORT_DIR)/tmp/onnxruntime-node-$(ORT_VERSION).tgz" | sha256sum -c --quiet
	tar -xzf $(ORT_DIR)/tmp/onnxruntime-node-$(ORT_VERSION).tgz -C $(ORT_DIR)/tmp package/bin/napi-v6/linux/x64/libonnxruntime.so.1
	echo "$(ORT_LIB_SHA256)  $(ORT_DIR)/tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" | sha256sum -c --quiet
	mv $(ORT_DIR)/tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1 $(ORT_LIB)
	rm -rf $(ORT_DIR)/tmp

PREFIX  ?= /usr/local
DESTDIR ?=
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/transformaly

# Binary, ONNX Runtime library, unit, example config (kept if present), docs.
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/transformaly
	install -D -m 0644 $(ORT_LIB) $(DESTDIR)$(PREFIX)/lib/transformaly/libonnxruntime.so.1
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local|$(PREFIX)|g' systemd/transformaly.service > $(DESTDIR)$(UNITDIR)/transformaly.service
	test -e $(DESTDIR)$(CONFDIR)/config.yaml || install -D -m 0644 systemd/config.example.yaml $(DESTDIR)$(CONFDIR)/config.yaml
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/transformaly/README.md
	@echo "installed; then: systemctl daemon-reload && systemctl enable --now transformaly"

vet:
	go vet ./...

# staticcheck runs pinned (v0.8.2 is its release 2026.2.2), built through
# the Go module proxy: no install step.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

test: deps
	go vet ./...
	go run $(STATICCHECK) -tags matprofile ./...
	go test -count=1 -tags matprofile $(GO_TEST_FLAGS) ./...

# Fuzzing of what reads user files: image headers (then OpenCV's decoder),
# safetensors checkpoints, bundles, the daemon configuration and queued
# events; FUZZTIME each (not part of make test, which runs their seeds).
FUZZTIME ?= 1m
FUZZ_TARGETS := capture:FuzzImageFile models:FuzzSafetensors models:FuzzBundleMetadata daemon:FuzzConfig mqtt:FuzzQueuedMessage
fuzz: deps
	set -e; for t in $(FUZZ_TARGETS); do \
		go test -tags matprofile -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) ./$${t%%:*}; \
	done

# Benchmarks print per-image latency, GFLOP/s and the fraction of the sgemm
# peak measured in the same run; the table and bench/bench.json follow.
# BENCH_FULL=1 adds batch 32; TRANSFORMALY_BENCH_PROVIDERS=cpu,cuda,tensorrt
# adds GPU providers where present.
bench: deps
	mkdir -p bench
	set -o pipefail; go test -run '^$$' -bench . -benchtime 2x -timeout 90m ./capture/ ./detector/ ./fit/ ./e2e/ | tee bench/bench.txt
	go run ./internal/benchreport -json bench/bench.json < bench/bench.txt

# GPU ONNX Runtime for `make gpu-check`: a core library and the CUDA and
# TensorRT provider libraries of the same version (1.29.0, CUDA 13,
# TensorRT 10), from the npm packages that carry them (Unity package
# version 0.4.9), all in one folder so both the classic provider route and
# the plugin route find them. Not needed for CPU boxes.
GPU_PKG_VERSION    := 0.4.9
GPU_CORE_SHA256    := e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
GPU_PROVIDERS_SHA256 := 2b459e0c17f340c92970c10ed86de4f37a3009f93c14053e6ad4334cbb6be412
GPU_DIR            := .deps/onnxruntime-gpu
GPU_CUDA_LIB       := $(GPU_DIR)/libonnxruntime_providers_cuda.so
gpu-deps: $(GPU_CUDA_LIB)

$(GPU_CUDA_LIB):
	@command -v npm >/dev/null || { echo "npm is needed (apt-get install npm)"; exit 1; }
	rm -rf $(GPU_DIR)/tmp && mkdir -p $(GPU_DIR)/tmp
	cd $(GPU_DIR)/tmp && npm pack --silent com.github.asus4.onnxruntime@$(GPU_PKG_VERSION) com.github.asus4.onnxruntime.linux-x64-gpu@$(GPU_PKG_VERSION) >/dev/null
	echo "$(GPU_CORE_SHA256)  $(GPU_DIR)/tmp/com.github.asus4.onnxruntime-$(GPU_PKG_VERSION).tgz" | sha256sum -c --quiet
	echo "$(GPU_PROVIDERS_SHA256)  $(GPU_DIR)/tmp/com.github.asus4.onnxruntime.linux-x64-gpu-$(GPU_PKG_VERSION).tgz" | sha256sum -c --quiet
	for t in $(GPU_DIR)/tmp/*.tgz; do tar -xzf $$t -C $(GPU_DIR)/tmp --wildcards 'package/Plugins/Linux/x64/*.so'; done
	mv $(GPU_DIR)/tmp/package/Plugins/Linux/x64/*.so $(GPU_DIR)/
	rm -rf $(GPU_DIR)/tmp
	ls -la $(GPU_DIR)

# What gpu-check needs on a bare GPU box without Go or network: the GPU
# ONNX Runtime files and the prebuilt test binaries, as one xz tar split
# into parts of 60 MiB (a device call carries 64 MiB; three parts, carried
# by back-to-back calls). xz, not zstd: GPU images often lack zstd, while
# xz, or Python's lzma, is nearly always there (the CUDA kernels are
# compressed already: 230 MB packs to 165 MB either way).
# The transformaly binary travels too, for the fit and daemon checks, with
# the shared libraries OpenCV pulls in (all but the C and C++ runtimes,
# which the box's own newer ones serve): about 300 MB, 90 MB packed.
GPU_CARRY := .deps/gpu-carry
gpu-carry: $(GPU_CUDA_LIB) deps
	rm -rf $(GPU_CARRY) && mkdir -p $(GPU_CARRY)/bin $(GPU_CARRY)/lib
	go test -c -o $(GPU_CARRY)/bin/detector.test ./detector
	go build -o $(GPU_CARRY)/bin/benchreport ./internal/benchreport
	go build -o $(GPU_CARRY)/bin/transformaly ./cmd/transformaly
	ldd $(GPU_CARRY)/bin/transformaly | awk '/=> \// {print $$3}' \
		| grep -vE '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s)\.so' \
		| xargs -I{} cp -L {} $(GPU_CARRY)/lib/
	cd .deps && tar -cf - onnxruntime-gpu/*.so gpu-carry/bin gpu-carry/lib | xz -6 -T0 > gpu-carry/gpu.tar.xz
	split -b 60M -d $(GPU_CARRY)/gpu.tar.xz $(GPU_CARRY)/gpu.tar.xz.part-
	rm -r $(GPU_CARRY)/gpu.tar.xz $(GPU_CARRY)/bin $(GPU_CARRY)/lib
	ls -la $(GPU_CARRY)

# Runs the detector on CUDA and TensorRT against the CPU and prints the
# benchmark table (see scripts/gpu-check.sh); about 8 minutes at most.
gpu-check:
	scripts/gpu-check.sh

clean:
	rm -rf bin

demo: build
	$(BIN) demo --dir demo
