//! x86-64: vCPU set-up (`cpu`), the guest memory map (`layout`), loading Linux (`boot`,
//! with the GDT and the MP table), and the in-kernel interrupt controllers and timer
//! (`irqchip`).

pub mod boot;
pub mod cpu;
pub mod irqchip;
pub mod layout;
pub mod state;

use std::path::PathBuf;

/// What setting up an x86-64 guest can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("opening {path}: {source}", path = .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither an ELF vmlinux ({elf}) nor a bzImage ({bzimage})", path = .path.display())]
    Kernel {
        path: PathBuf,
        elf: linux_loader::loader::Error,
        bzimage: linux_loader::loader::Error,
    },
    #[error("initrd ({size} bytes) does not fit in guest memory")]
    InitrdTooBig { size: u64 },
    #[error("initrd ({size} bytes) overlaps the kernel: give the VM more memory")]
    InitrdOverlapsKernel { size: u64 },
    #[error("reading the initrd into guest memory: {0}")]
    InitrdRead(#[source] vm_memory::VolatileMemoryError),
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("writing the command line or boot_params: {0}")]
    BootParams(String),
    #[error("{0} does not fit its boot-protocol field")]
    TooLarge(&'static str),
    #[error("the MP table describes 1 to 254 CPUs, not {0}")]
    Cpus(u8),
    #[error("an MP table for {0} CPUs does not fit in the last KiB of base memory")]
    MpTableTooBig(u8),
    #[error("building the MSR list: {0}")]
    Msrs(String),
    #[error("KVM took {written} of {wanted} boot MSRs")]
    MsrsRefused { written: usize, wanted: usize },
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Maps a KVM ioctl's error to `Error::Kvm`, naming the ioctl.
pub fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}

pub type Result<T> = std::result::Result<T, Error>;
