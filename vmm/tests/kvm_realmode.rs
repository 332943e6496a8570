//! Tier 2: hull-vmm's KVM setup, serial and exits on this host's /dev/kvm with tiny
//! hand-written real-mode guests (a PVM-backed /dev/kvm runs real mode, not Linux).

// Guest values are u32/u64 and land in narrower fields: every narrowing is checked.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_lossless
)]

use hull_vmm::devices::serial::SharedBuffer;
use hull_vmm::machine::{Boot, Devices, ExitReason, Machine, MachineConfig};

fn run(image: &[u8]) -> (Result<ExitReason, hull_vmm::machine::Error>, Vec<u8>) {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm"
    );
    let out = SharedBuffer::default();
    let cfg = MachineConfig {
        memory_mib: 32,
        vcpus: 1,
        boot: Boot::RealMode {
            image: image.to_vec(),
            addr: 0x1000,
        },
        serial_out: Box::new(out.clone()),
        devices: Devices::default(),
    };
    let r = Machine::new(cfg).and_then(Machine::run);
    (r, out.contents())
}

#[test]
fn serial_output_then_i8042_reset_ends_the_vm() {
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'h', 0xee, // mov al, 'h'; out dx, al
        0xb0, b'i', 0xee, // mov al, 'i'; out dx, al
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
        0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al  (i8042: reset)
        0xf4, // hlt (never reached)
    ];
    let (r, out) = run(&code);
    assert_eq!(r.unwrap(), ExitReason::Reset);
    assert_eq!(out, b"hi\n");
}

#[test]
fn bad_configurations_are_errors() {
    let cfg = |vcpus, memory_mib| MachineConfig {
        memory_mib,
        vcpus,
        boot: Boot::RealMode {
            image: vec![0xf4],
            addr: 0x1000,
        },
        serial_out: Box::new(std::io::sink()),
        devices: Devices::default(),
    };
    assert!(Machine::new(cfg(0, 32)).is_err_and(|e| e.to_string().contains("vCPU")));
    assert!(Machine::new(cfg(1, 4)).is_err_and(|e| e.to_string().contains("16 MiB")));
    let missing = MachineConfig {
        memory_mib: 64,
        vcpus: 1,
        boot: Boot::Linux {
            kernel: "/nonexistent/vmlinux".into(),
            initrd: None,
            cmdline: String::new(),
        },
        serial_out: Box::new(std::io::sink()),
        devices: Devices::default(),
    };
    assert!(Machine::new(missing).is_err_and(|e| e.to_string().contains("/nonexistent/vmlinux")));
}
