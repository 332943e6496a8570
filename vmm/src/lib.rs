//! hull-vmm: hull's own KVM microVM monitor on the rust-vmm crates.
//!
//! | module | owns |
//! |---|---|
//! | `layout` | the guest physical memory map |
//! | `memory` | memfd-backed guest RAM (shareable with vhost-user daemons) |
//! | `boot` | loading kernel, initrd, command line; boot_params and e820 |
//! | `cpu` | vCPU state for the 64-bit boot protocol (or real mode) |
//! | `devices` | port-I/O devices (8250 serial, i8042 reset, boot timer) and virtio-mmio (vsock, blk, fs) |
//! | `machine` | the VM, its vCPU threads and their exits |
//! | `config` | the VM description, from flags or `--config vm.json` |
//! | `api` | the API socket (ping, shutdown) |
//! | `seccomp` | the per-thread seccomp filters and the SIGSYS report |
//! | `jail` | the namespaces, pivot_root and privilege drop hull-vmm confines itself with |
//! | `log_budget` | bounds on log lines a guest can trigger |

pub mod api;
pub mod boot;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod jail;
pub mod layout;
pub mod log_budget;
pub mod machine;
pub mod memory;
pub mod seccomp;
