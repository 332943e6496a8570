//! virtio-vsock (device type 19) with Firecracker's hybrid unix-socket backend.
//!
//! Host → guest: a program connects to the unix socket `uds`, writes `CONNECT <port>\n`,
//! and once the guest accepts it reads `OK <host port>\n`; the stream then carries the
//! connection's bytes. Guest → host: a guest connection to host port P becomes a unix
//! connection to `<uds>_P`. Flow control follows the virtio spec's credit scheme.
//!
//! The state sits behind one mutex shared by the vCPU thread (queue notifications) and
//! the device's epoll thread (host sockets).

mod muxer;
pub mod packet;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{Error, Interrupt, VirtioDevice, expect_queues, io, read_config_bytes};
pub use muxer::Muxer;

pub const DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const RX: u16 = 0;
const TX: u16 = 1;

pub struct Vsock {
    cid: u64,
    muxer: Arc<Mutex<Muxer>>,
}

impl Vsock {
    /// Binds the hybrid socket at `uds` and starts the device's epoll thread.
    pub fn new(cid: u64, uds: PathBuf) -> Result<Vsock, Error> {
        if !(3..u64::from(u32::MAX)).contains(&cid) {
            return Err(Error::Config(format!(
                "guest cid {cid} is reserved or too large"
            )));
        }
        let socket = io(format!("vsock socket {}", uds.display()));
        let muxer = Muxer::new(cid, uds).map_err(socket)?;
        let muxer = Arc::new(Mutex::new(muxer));
        muxer::spawn_event_loop(muxer.clone()).map_err(io("starting the vsock thread"))?;
        Ok(Vsock { cid, muxer })
    }
}

/// A handle on a vsock device's host side that stays usable after the device is handed
/// to its transport (tests and fuzzing read how much the guest made it hold).
#[derive(Clone)]
pub struct VsockProbe(Arc<Mutex<Muxer>>);

impl VsockProbe {
    /// Open connections and replies waiting for guest RX buffers.
    pub fn load(&self) -> (usize, usize) {
        self.0.lock().expect("vsock lock").load()
    }
}

impl Vsock {
    pub fn probe(&self) -> VsockProbe {
        VsockProbe(self.muxer.clone())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The config space is the 64-bit guest cid.
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), Error> {
        expect_queues("vsock", 3, queues.len())?;
        let tx = queues.remove(1);
        let rx = queues.remove(0);
        self.muxer
            .lock()
            .expect("vsock lock")
            .activate(mem, rx, tx, interrupt);
        Ok(())
    }

    fn notify(&mut self, index: u16) {
        let mut m = self.muxer.lock().expect("vsock lock");
        match index {
            RX => m.rx_buffers_added(),
            TX => m.process_tx(),
            _ => {} // event queue: the device sends no events
        }
    }

    fn reset(&mut self) {
        self.muxer.lock().expect("vsock lock").reset();
    }
}
