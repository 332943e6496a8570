//! hull-vmm: hull's own KVM microVM monitor on the rust-vmm crates.
//!
//! | module | owns |
//! |---|---|
//! | `arch::x86_64` | what knows x86: `layout` (the guest physical memory map), `boot` (kernel, initrd, command line, boot_params and e820, GDT, MP table), `cpu` (CPUID, MSRs, vCPU state for the 64-bit boot protocol or real mode), `irqchip` (KVM's PIC, IOAPIC and PIT), `state` (what KVM holds of a vCPU and the VM, saved and restored) |
//! | `memory` | memfd-backed guest RAM (shareable with vhost-user daemons) |
//! | `devices` | port-I/O devices (8250 serial, i8042 reset, boot timer) and virtio-mmio (vsock, blk, fs) |
//! | `machine` | the VM, its vCPU threads and their exits |
//! | `config` | the VM description, from flags or `--config vm.json` |
//! | `api` | the API socket (ping, stats, pause, resume, snapshot, shutdown) |
//! | `vm_control` | pausing and resuming the vCPUs and device loops, and taking a snapshot |
//! | `vcpu_kick` | getting a vCPU thread out of KVM_RUN (a signal that sets immediate_exit) |
//! | `snapshot` | the snapshot's files: the versioned state file and guest memory |
//! | `seccomp` | the per-thread seccomp filters and the SIGSYS report |
//! | `jail` | the namespaces, pivot_root and privilege drop hull-vmm confines itself with |
//! | `log_budget` | bounds on log lines a guest can trigger |

// Guest values are u32/u64 and land in narrower fields: every narrowing is checked.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_lossless
)]

pub mod api;
pub mod arch;
pub mod config;
pub mod devices;
pub mod exit_stats;
pub mod jail;
pub mod log_budget;
pub mod machine;
pub mod memory;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu_kick;
pub mod vm_control;

// The architecture's parts under their old names, for the binary and the tests.
pub use arch::x86_64::{boot, cpu, layout};
