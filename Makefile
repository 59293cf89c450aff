# kata-gpu: one entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
# Debian packages the tests need: real containerd, runc and ctr; busybox for test root
# file systems; QEMU to check the arguments the sandbox plan emits; protoc for the CRI client.
APT_PACKAGES := containerd runc busybox-static qemu-system-x86 protobuf-compiler

.PHONY: help deps build test unit lint fmt bench fuzz demo clean

help:
	@echo "make demo   the whole path on a simulated H100 host with a private containerd (root)"
	@echo "make deps   install what the tests need (apt-get; run as root)"
	@echo "make build  build every crate and the kata-gpu binary"
	@echo "make test   lint, then every test of the workspace (what CI runs)"
	@echo "make unit   the tests alone, without lint"
	@echo "make lint   cargo fmt --check and clippy -D warnings"
	@echo "make bench  every benchmark, bench/shim.sh and bench/load.sh (figures in BENCHMARKS.md)"
	@echo "make fuzz   run each fuzz target briefly (FUZZ_SECONDS=$(FUZZ_SECONDS))"

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all present ($(APT_PACKAGES))"; \
	else echo "deps: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@command -v containerd >/dev/null && command -v ctr >/dev/null && command -v runc >/dev/null \
	  && command -v containerd-shim-runc-v2 >/dev/null && command -v busybox >/dev/null \
	  && command -v qemu-system-x86_64 >/dev/null \
	  || { echo "deps: containerd, ctr, runc, containerd-shim-runc-v2, busybox or qemu-system-x86_64 still missing" >&2; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
	@python3 -c 'import kubernetes_validate' 2>/dev/null \
	  || { echo "deps: installing kubernetes-validate (Kubernetes schemas for the manifest tests)"; \
	       python3 -m pip install -q kubernetes-validate; }

demo: deps
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
	$(CARGO) bench -p cdi -p kata-gpu-shim -p kata-gpu-configs -p kata-gpu-containerd-config -p kata-gpu-artifacts
	bash bench/shim.sh
	bash bench/load.sh

FUZZ_SECONDS ?= 20
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
