# kata-gpu: one entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
# Where the third-party tarballs are (containerd 1.7/2.1/2.3, Kata 3.30) and where `make deps`
# unpacks them; tests find the parts through KATA_GPU_PARTS (default: ./parts).
THIRD_PARTY ?= ../shared/third_party
PARTS ?= parts

# `make install`: where kata-gpu and the shim go ($(DESTDIR)$(PREFIX)/bin; DESTDIR is also the
# --host-root the record goes under), and which built binaries (default: a release build).
PREFIX ?= /usr/local
DESTDIR ?=
BIN_DIR ?=

.PHONY: help deps build test unit lint fmt bench fuzz demo clean install uninstall

help:
	@echo "make demo   the whole path on a simulated H100 host with a private containerd (root)"
	@echo "make deps   install what the tests need: Debian packages, QEMU 10 (backports), the real parts (root)"
	@echo "make build  build every crate and the kata-gpu binary"
	@echo "make test   lint, then every test of the workspace (what CI runs)"
	@echo "make unit   the tests alone, without lint"
	@echo "make lint   cargo fmt --check and clippy -D warnings"
	@echo "make bench  every benchmark, bench/shim.sh, bench/load.sh and bench/image.sh (figures in BENCHMARKS.md)"
	@echo "make image  the node image as an OCI-layout tar (IMAGE=REF, IMAGE_TAR=FILE)"
	@echo "make fuzz   run each fuzz target briefly (FUZZ_SECONDS=$(FUZZ_SECONDS)); installs cargo-fuzz first if missing (about 8 minutes, once)"
	@echo "make install    kata-gpu and the shim under every profile name into \$$DESTDIR\$$PREFIX/bin (PREFIX=$(PREFIX)), atomically; BIN_DIR=DIR installs a build already made"
	@echo "make uninstall  remove what make install installed (refused while a profile is registered)"

deps:
	THIRD_PARTY=$(THIRD_PARTY) PARTS=$(PARTS) bash scripts/deps.sh

# The demo needs only Debian's containerd, runc, ctr and busybox (and protoc to build).
demo:
	DEPS_FOR=demo bash scripts/deps.sh
	bash demo/demo.sh

build:
	$(CARGO) build --workspace --all-targets

test: lint unit

unit:
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	$(CARGO) bench -p cdi -p kata-gpu-plan -p kata-gpu-configs -p kata-gpu-containerd-config -p kata-gpu-artifacts
	$(CARGO) bench -p kata-gpu-tests --bench pod_resources --bench device_plugin_allocate
	bash bench/shim.sh
	BENCH_CONTAINERD=2.3.4 bash bench/shim.sh
	bash bench/load.sh
	$(MAKE) image
	$(CARGO) build --quiet -p kata-gpu-simhost
	bash bench/image.sh

FUZZ_SECONDS ?= 20
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)

install:
	@set -e; dir="$(BIN_DIR)"; \
	if [ -z "$$dir" ]; then $(CARGO) build --release -p kata-gpu -p kata-gpu-shim; dir="$${CARGO_TARGET_DIR:-target}/release"; fi; \
	"$$dir/kata-gpu" binaries install --from "$$dir" --prefix "$(PREFIX)" --host-root "$(or $(DESTDIR),/)"

uninstall:
	"$(DESTDIR)$(PREFIX)/bin/kata-gpu" binaries remove --host-root "$(or $(DESTDIR),/)"

clean:
	$(CARGO) clean

# The node image (README, "Deploy on a cluster"): kata-gpu, the shim under each profile's
# name and the shared libraries they load, as an OCI-layout tar, the same bytes for the
# same commit. IMAGE_PROFILE=dev builds it from debug binaries (what the tests do).
# ARTIFACTS="snp=DIR tdx=FILE.tar" puts each profile's artifact set (a directory, an OCI
# layout or a tarball) into the image under /artifacts, where `kata-gpu agent` finds it.
IMAGE ?= kata-gpu:dev
ARTIFACTS ?=
IMAGE_TAR ?= target/kata-gpu-image.tar
IMAGE_PROFILE ?= release
IMAGE_BIN = target/$(if $(filter dev,$(IMAGE_PROFILE)),debug,$(IMAGE_PROFILE))
# The image's revision label: the commit, `-dirty` when tracked files differ from it (an
# image built from a changed tree must not pass for the commit).
REVISION = $(shell git rev-parse -q --verify HEAD 2>/dev/null || echo unknown)$(shell git rev-parse -q --verify HEAD >/dev/null 2>&1 && { git diff --quiet HEAD -- || echo -dirty; })
.PHONY: image
image:
	$(CARGO) build --quiet --profile $(IMAGE_PROFILE) -p kata-gpu -p kata-gpu-shim -p kata-gpu-image
	$(IMAGE_BIN)/kata-gpu-image --kata-gpu $(IMAGE_BIN)/kata-gpu \
	  --shim $(IMAGE_BIN)/containerd-shim-kata-qemu-nvidia-gpu-snp-v2 \
	  $(foreach a,$(ARTIFACTS),--artifacts $(a)) \
	  --name $(IMAGE) --revision "$(REVISION)" --output $(IMAGE_TAR)
