//! hull-vmm: hull's own KVM microVM monitor on the rust-vmm crates.
//!
//! | module | owns |
//! |---|---|
//! | `layout` | the guest physical memory map |
//! | `memory` | memfd-backed guest RAM (shareable with vhost-user daemons) |
//! | `boot` | loading kernel, initrd, command line; boot_params and e820 |
//! | `cpu` | vCPU state for the 64-bit boot protocol (or real mode) |
//! | `devices` | port-I/O devices (8250 serial, i8042 reset) and virtio-mmio (vsock) |
//! | `machine` | the VM, its vCPU threads and their exits |
//!
//! Not yet here (see issue "hull-vmm"): virtio-blk, vhost-user-fs, seccomp filters, the
//! API socket.

pub mod api;
pub mod boot;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod seccomp;
