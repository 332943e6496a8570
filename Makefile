# hull — top-level build. `make demo` and `make test` are the two commands in README.md.

CARGO        ?= cargo
TARGET       := x86_64-unknown-linux-gnu
AGENT_STATIC := target/$(TARGET)/guest/hull-agent
# The agent is PID 1 of an initrd with no libraries: link it statically, libseccomp too.
STATIC_ENV   := RUSTFLAGS="-C target-feature=+crt-static" \
                LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu

PREFIX       ?= /usr/local
DESTDIR      ?=

.PHONY: all setup kernel test-host-kernel agent-static initrd guest build release lint test fuzz boot-loop demo bench bench-vmm bench-start bench-net bench-load test-nested-load install clean

all: build guest

setup:
	scripts/setup.sh

## guest kernel (cached in ~/.cache/hull) -> build/vmlinux, build/vmlinux.config
kernel:
	guest-kernel-config/build.sh guest build
	ln -sf vmlinux-guest build/vmlinux
	ln -sf vmlinux-guest.config build/vmlinux.config

agent-static:
	$(STATIC_ENV) $(CARGO) build --profile guest --locked -p hull-agent --target $(TARGET)

## the nested test host's kernel (KVM + kvm-amd + 9p; cached) -> build/vmlinux-test-host
test-host-kernel:
	guest-kernel-config/build.sh test-host build

## initrd with the static agent as /init -> build/initrd.img
initrd: agent-static
	rootfs/build.sh $(AGENT_STATIC) build/initrd.img

guest: kernel initrd

build:
	$(CARGO) build --locked --workspace --all-targets

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## everything CI runs: set-up, guest artifacts, lint, unit + host integration + VM tests
test: setup guest test-host-kernel build lint
	$(CARGO) test --locked --workspace

## the nested tier's long runs, kept out of `make test` for their length: 50 consecutive
## hull-vmm boots (none may fail), 8 pods at once from one template, 16 MiB each way
## through both net paths, and 8 pods at once on QEMU + KVM, the control for the hull-vmm
## eight that `make test` runs (~20 min)
test-nested-load: guest test-host-kernel build
	$(CARGO) test --locked -p hull-tests --test nested_vmm -- --ignored --exact hull_vmm_boots_fifty_times_in_a_row eight_pods_at_once_from_a_template_in_the_test_host bulk_transfers_through_hull_vmm_in_the_test_host eight_pods_at_once_on_qemu_kvm_in_the_test_host

## the device fuzz targets at 10^6 rounds each, alone and with a thread racing the device
## on guest memory (not in CI: minutes); FUZZ_ITERS and HULL_FUZZ_SEED override
FUZZ_ITERS ?= 1000000
fuzz:
	HULL_FUZZ_ITERS=$(FUZZ_ITERS) $(CARGO) test --release --locked -p hull-vmm --test fuzz_devices -- --nocapture --test-threads=1
	HULL_FUZZ_RACE=1 HULL_FUZZ_ITERS=$(FUZZ_ITERS) $(CARGO) test --release --locked -p hull-vmm --test fuzz_devices -- --nocapture --test-threads=1

## N (default 100) consecutive QEMU boots to agent-ready, with figures and failures
BOOTS ?= 100
boot-loop: guest
	HULL_BOOT_LOOP=$(BOOTS) $(CARGO) test --locked -p hull-tests --test vm_qemu qemu_boot_loop -- --ignored --nocapture

release:
	$(CARGO) build --release --locked -p hull-shim -p hull-vmm

## a private containerd runs a busybox container in a hull microVM and shows its output
demo: setup guest build
	scripts/demo.sh

## pod start time (vs runc) and per-pod memory, printed
bench: setup guest release
	benches/pod-start.sh
	benches/podman.sh

## N (default 20) pods started at once: start-time percentiles, failures, memory per pod
bench-load: setup guest release
	benches/load.sh

## hull-vmm boot time and memory overhead, measured in the nested test host, printed
bench-vmm: guest test-host-kernel release
	benches/vmm-boot.sh

## hull-vmm cold boot vs restore from a snapshot (launch -> agent answers) and the PSS per
## VM of 1, 5 and 10 VMs cold or restored from one snapshot, in the nested test host
bench-start: guest test-host-kernel release
	benches/vmm-start.sh

## pod network throughput (iperf3, both ways) and ping RTT, hull vs runc on the same kind
## of link: here (QEMU, or hull-vmm where KVM is real), then hull-vmm in the nested test host
bench-net: setup guest test-host-kernel release
	benches/net.sh
	tests/nested/test-host.sh --timeout 900 --memory 4096 -- env HULL_HYPERVISOR=builtin benches/net.sh

## the shim and its helpers on PATH, kernel + initrd in $(PREFIX)/share/hull, config in /etc/hull
install: guest release
	install -D -m 0755 target/release/containerd-shim-hull-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-hull-v2
	install -D -m 0755 target/release/hull-vmm $(DESTDIR)$(PREFIX)/bin/hull-vmm
	install -D -m 0755 target/release/hull-agent-probe $(DESTDIR)$(PREFIX)/bin/hull-agent-probe
	install -D -m 0755 target/release/hull $(DESTDIR)$(PREFIX)/bin/hull
	install -D -m 0755 $$(command -v vhost-device-vsock || echo $$HOME/.cargo/bin/vhost-device-vsock) $(DESTDIR)$(PREFIX)/bin/vhost-device-vsock
	install -D -m 0755 $$(command -v virtiofsd || echo $$HOME/.cargo/bin/virtiofsd) $(DESTDIR)$(PREFIX)/bin/virtiofsd
	install -D -m 0644 build/vmlinux $(DESTDIR)$(PREFIX)/share/hull/vmlinux
	install -D -m 0644 build/initrd.img $(DESTDIR)$(PREFIX)/share/hull/initrd.img
	@if [ -e $(DESTDIR)/etc/hull/config.toml ]; then \
	  echo "keeping existing $(DESTDIR)/etc/hull/config.toml"; \
	else \
	  install -d $(DESTDIR)/etc/hull && \
	  sed 's|/usr/local/share/hull|$(PREFIX)/share/hull|' config/hull.toml > $(DESTDIR)/etc/hull/config.toml; \
	fi

clean:
	rm -rf build
	$(CARGO) clean
