# hull — top-level build. `make demo` and `make test` are the two commands in README.md.

CARGO        ?= cargo
TARGET       := x86_64-unknown-linux-gnu
AGENT_STATIC := target/$(TARGET)/release/hull-agent
# The agent is PID 1 of an initrd with no libraries: link it statically, libseccomp too.
STATIC_ENV   := RUSTFLAGS="-C target-feature=+crt-static" \
                LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu

.PHONY: all setup kernel agent-static initrd guest build lint unit-test test demo clean

all: build guest

setup:
	scripts/setup.sh

## guest kernel (cached in ~/.cache/hull) -> build/vmlinux, build/vmlinux.config
kernel:
	guest-kernel-config/build.sh guest build
	ln -sf vmlinux-guest build/vmlinux
	ln -sf vmlinux-guest.config build/vmlinux.config

agent-static:
	$(STATIC_ENV) $(CARGO) build --release --locked -p hull-agent --target $(TARGET)

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
test: setup guest build lint
	$(CARGO) test --locked --workspace

## boots the guest under QEMU and runs one busybox container through the agent
demo: setup guest build
	target/debug/hull-demo

clean:
	rm -rf build
	$(CARGO) clean
