//! Tier 2: pause, resume, snapshot and restore on this host's /dev/kvm, with a real-mode
//! guest that counts in memory as fast as it can (it never exits to hull-vmm, so only a
//! kick gets its vCPU out of KVM_RUN). Linux guests are snapshotted in the nested tier.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use hull_vmm::machine::{Boot, Devices, Error, ExitReason, Machine, MachineConfig, RestoreConfig};
use hull_vmm::vm_control::Control;

/// `inc dword [0x2000]; jmp $-7` at 0x1000.
const COUNTER: [u8; 7] = [0x66, 0xff, 0x06, 0x00, 0x20, 0xeb, 0xf9];
const COUNTER_ADDR: u64 = 0x2000;

/// A one-vCPU VM of `memory_mib` running the counter.
fn counting_vm(memory_mib: u32) -> Machine {
    Machine::new(MachineConfig {
        memory_mib,
        vcpus: 1,
        boot: Boot::RealMode {
            image: COUNTER.to_vec(),
            addr: 0x1000,
        },
        serial_out: Box::new(std::io::sink()),
        devices: Devices::default(),
    })
    .unwrap()
}

/// Runs `machine` on a thread; returns its control and where its end is reported.
fn start(
    machine: Machine,
) -> (
    std::sync::Arc<Control>,
    mpsc::Receiver<Result<ExitReason, Error>>,
) {
    let control = machine.control();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(machine.run());
    });
    (control, rx)
}

/// Pauses a VM whose `run` may not have started its vCPUs yet.
fn pause(control: &Control) {
    for _ in 0..100 {
        match control.pause() {
            Err(hull_vmm::vm_control::Error::NotRunning) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
    panic!("the VM never ran");
}

fn counter_in(dir: &Path) -> u32 {
    let f = std::fs::File::open(dir.join("memory")).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, COUNTER_ADDR).unwrap();
    u32::from_le_bytes(b)
}

fn snapshot(control: &Control, dir: &Path) -> u32 {
    std::fs::create_dir_all(dir).unwrap();
    control.snapshot(dir).unwrap();
    counter_in(dir)
}

#[test]
fn a_counting_guest_pauses_snapshots_and_goes_on_after_restore() {
    assert!(Path::new("/dev/kvm").exists(), "these tests need /dev/kvm");
    let tmp = tempfile::tempdir().unwrap();
    let machine = counting_vm(32);
    let exit = machine.exit_sender();
    let (control, ended) = start(machine);
    std::thread::sleep(Duration::from_millis(200));

    // Refusals change nothing.
    let e = control.snapshot(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("not paused"), "{e}");
    assert!(
        control
            .resume()
            .unwrap_err()
            .to_string()
            .contains("not paused")
    );

    control.pause().unwrap();
    assert!(
        control
            .pause()
            .unwrap_err()
            .to_string()
            .contains("already paused")
    );
    let first = snapshot(&control, &tmp.path().join("a"));
    assert!(first > 0, "the guest counted before the pause");
    std::thread::sleep(Duration::from_millis(200));
    let still = snapshot(&control, &tmp.path().join("b"));
    assert_eq!(first, still, "a paused guest does not run");

    control.resume().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    control.pause().unwrap();
    let later = snapshot(&control, &tmp.path().join("c"));
    assert!(
        later > first,
        "a resumed guest counts on: {first} then {later}"
    );
    exit.send(Ok(ExitReason::ApiShutdown)).unwrap();
    assert_eq!(ended.recv().unwrap().unwrap(), ExitReason::ApiShutdown);

    // Restored twice from the first snapshot: each counts on from `first`, in memory of
    // its own (the snapshot file is not written through).
    for round in 0..2 {
        let restored = Machine::restore(RestoreConfig {
            dir: tmp.path().join("a"),
            serial_out: Box::new(std::io::sink()),
            devices: Devices::default(),
        })
        .unwrap();
        let exit = restored.exit_sender();
        let (control, ended) = start(restored);
        std::thread::sleep(Duration::from_millis(200));
        pause(&control);
        let after = snapshot(&control, &tmp.path().join(format!("r{round}")));
        assert!(after > first, "round {round}: {first} then {after}");
        exit.send(Ok(ExitReason::ApiShutdown)).unwrap();
        assert_eq!(ended.recv().unwrap().unwrap(), ExitReason::ApiShutdown);
        assert_eq!(counter_in(&tmp.path().join("a")), first);
    }
}

#[test]
fn damaged_or_mismatched_snapshots_are_refused() {
    let restore = |dir: &Path, devices: Devices| {
        Machine::restore(RestoreConfig {
            dir: dir.to_path_buf(),
            serial_out: Box::new(std::io::sink()),
            devices,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let e = restore(&tmp.path().join("missing"), Devices::default());
    assert!(e.contains("opening") && e.contains("state"), "{e}");

    let machine = counting_vm(16);
    let exit = machine.exit_sender();
    let (control, ended) = start(machine);
    pause(&control);
    let good = tmp.path().join("good");
    snapshot(&control, &good);
    exit.send(Ok(ExitReason::ApiShutdown)).unwrap();
    ended.recv().unwrap().unwrap();

    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in ["state", "memory"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let truncated = copy("truncated-memory");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("memory"))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    let e = restore(&truncated, Devices::default());
    assert!(e.contains("has 1048576 bytes; the VM has 16777216"), "{e}");

    let tampered = copy("tampered-state");
    let mut bytes = std::fs::read(tampered.join("state")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(tampered.join("state"), bytes).unwrap();
    let e = restore(&tampered, Devices::default());
    assert!(e.contains("checksum mismatch"), "{e}");

    let other_devices = copy("other-devices");
    let e = restore(
        &other_devices,
        Devices {
            vsock: Some(hull_vmm::machine::VsockConfig {
                cid: 3,
                uds: tmp.path().join("v.sock"),
            }),
            ..Devices::default()
        },
    );
    assert!(e.contains("the snapshot has 0 virtio devices"), "{e}");
}
