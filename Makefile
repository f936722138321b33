# husk: a microVM sandbox runtime. `make demo` and `make test` install what they need.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
GUEST_DIR := target/guest
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT_BIN := target/$(AGENT_TARGET)/release/husk-agent
VMM_BIN := target/release/husk-vmm
TESTHOST := tests/testhost/run.sh

# Debian packages the build, the guest image and the tests need.
APT_PACKAGES := qemu-system-x86 busybox-static cpio linux-source-6.1 bison flex bc libelf-dev protobuf-compiler \
	xz-utils lz4 file python3 gcc libc6-dev

.PHONY: all deps build agent guest-image kernel initramfs demo test unit-test integration-test \
	bench fmt clippy lint clean

all: build guest-image

# Installs missing Debian packages (apt-get update first, once per run) and prepares the test
# host's cached kernel. Idempotent: a second run installs nothing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(TESTHOST) --prepare

build:
	$(CARGO) build --release --workspace --exclude husk-agent
	$(MAKE) agent

# The agent is PID 1 of the guest: a static-pie binary on the gnu target.
agent:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p husk-agent --target $(AGENT_TARGET)

kernel:
	guest-image/build-kernel.sh $(GUEST_DIR)/vmlinux

initramfs: agent
	guest-image/build-initramfs.sh $(AGENT_BIN) $(GUEST_DIR)/initramfs.img

guest-image: kernel initramfs

# Boots the guest with husk-vmm and shows the agent's ready line and the boot time, then runs a
# command in a fresh microVM with huskctl (in the test host where this machine's KVM cannot run
# a standard guest).
demo: deps build guest-image
	@echo "== husk-vmm boots the guest (2 vCPUs, 256 MiB); the agent prints its ready line:"
	@start=$$(date +%s.%N); \
	$(TESTHOST) $(VMM_BIN) --kernel $(GUEST_DIR)/vmlinux --initrd $(GUEST_DIR)/initramfs.img \
		--vcpus 2 --memory 256 --console stdio </dev/null; rc=$$?; \
	end=$$(date +%s.%N); \
	echo "== husk-vmm exited with status $$rc; wall time including the test host: $$(echo "$$end - $$start" | bc) s"
	@echo "== huskctl run -- busybox uname -a   (a command in its own microVM, over vsock):"
	@$(TESTHOST) target/release/huskctl run -- busybox sh -c 'uname -a; echo "this guest has $$(nproc) vCPU"' </dev/null; \
	echo "== huskctl exited with status $$?"

test: deps build guest-image unit-test integration-test

unit-test:
	$(CARGO) test --workspace --exclude husk-integration

integration-test:
	$(CARGO) test --release -p husk-integration -- --test-threads=1

bench: deps build guest-image
	tests/bench/boot.sh

fmt:
	$(CARGO) fmt --all

clippy lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
