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
	xz-utils lz4 file python3 gcc libc6-dev containerd runc containernetworking-plugins iproute2 libseccomp-dev \
	python3-grpcio python3-protobuf

.PHONY: all deps build agent guest-image kernel initramfs demo test unit-test integration-test \
	bench netprobe fuzz fuzz-smoke fmt clippy lint clean install install-files uninstall

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

# The agent is PID 1 of the guest: a static-pie binary on the gnu target, with libseccomp
# (libseccomp-dev's libseccomp.a) linked in for the containers' seccomp profiles.
LIBSECCOMP_LIB_PATH ?= /usr/lib/x86_64-linux-gnu
agent:
	@[ -f $(LIBSECCOMP_LIB_PATH)/libseccomp.a ] || { echo "agent: $(LIBSECCOMP_LIB_PATH)/libseccomp.a is missing: install libseccomp-dev (make deps)" >&2; exit 1; }
	RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static \
		LIBSECCOMP_LIB_PATH=$(LIBSECCOMP_LIB_PATH) \
		$(CARGO) build --release -p husk-agent --target $(AGENT_TARGET)

# make bench's network probe, static like the agent so that it also runs in a guest container.
NETPROBE_BIN := target/$(AGENT_TARGET)/release/husk-netprobe
netprobe:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p husk-netprobe --target $(AGENT_TARGET)

kernel:
	guest-image/build-kernel.sh $(GUEST_DIR)/vmlinux

initramfs: agent
	guest-image/build-initramfs.sh $(AGENT_BIN) $(GUEST_DIR)/initramfs.img

guest-image: kernel initramfs

# Runs a container in a husk microVM through containerd: `ctr run --runtime io.containerd.kata.v2`
# against a private containerd (in the test host where this machine's KVM cannot run a standard
# guest), then a command in a microVM of its own with huskctl.
demo: deps build guest-image
	@bash -c '. tests/containerd/env.sh; ctrd_busybox_tar >/dev/null'
	@$(TESTHOST) tests/containerd/demo.sh </dev/null
	@echo "== huskctl run -- busybox uname -a   (a command in its own microVM, over vsock):"
	@$(TESTHOST) target/release/huskctl run -- busybox sh -c 'uname -a; echo "this guest has $$(nproc) vCPU"' </dev/null; \
	echo "== huskctl exited with status $$?"

# Installs the shim, the VMM, huskctl, the guest image and the default configuration.
# /etc/kata-containers/ is the administrator's: never created, changed or removed here.
SHARE_DIR := $(DESTDIR)/usr/share/kata-containers/husk
DEFAULTS_DIR := $(DESTDIR)/usr/share/defaults/kata-containers
install: build guest-image install-files

install-files:
	install -d $(DESTDIR)$(PREFIX)/bin $(SHARE_DIR) $(DEFAULTS_DIR)
	install -m 0755 target/release/containerd-shim-kata-v2 target/release/husk-vmm \
		target/release/huskctl $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(GUEST_DIR)/vmlinux $(GUEST_DIR)/initramfs.img $(SHARE_DIR)/
	install -m 0644 configs/configuration.toml $(DEFAULTS_DIR)/configuration.toml

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/containerd-shim-kata-v2 $(DESTDIR)$(PREFIX)/bin/husk-vmm \
		$(DESTDIR)$(PREFIX)/bin/huskctl $(SHARE_DIR)/vmlinux $(SHARE_DIR)/initramfs.img \
		$(DEFAULTS_DIR)/configuration.toml

test: deps build guest-image unit-test fuzz-smoke integration-test

unit-test:
	$(CARGO) test --workspace --exclude husk-integration

# The batch logs start empty so that the retry summary counts this run only; the summary is
# printed whether the tests passed or not, and more than one retry of a kind fails the run.
integration-test:
	@rm -rf target/testhost-logs
	@rc=0; $(CARGO) test --release -p husk-integration -- --test-threads=1 || rc=$$?; \
	tests/retry-summary.sh || rc=1; exit $$rc

bench: deps build netprobe guest-image
	tests/bench/boot.sh

# Coverage-guided fuzzing of the VMM's guest-facing parsers (fuzz/): builds the targets with
# stable rustc and libFuzzer, then runs each for FUZZ_SECONDS. A crash, hang or leak fails the
# target and names the input it saved under target/fuzz-artifacts/.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

# A few seconds per target, for CI.
fuzz-smoke:
	FUZZ_SECONDS=5 fuzz/run.sh

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml

clippy lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
