//! The 8250 UART at 0x3f8 (COM1, IRQ 4), from vm-superio; its interrupt is an eventfd
//! registered as a KVM irqfd. Output goes to a log file, stdout, or a buffer (tests).

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

pub const BASE: u16 = 0x3f8;
pub const LAST: u16 = 0x3ff;
pub const IRQ: u32 = 4;

/// A port's register offset from BASE, for a port in BASE..=LAST.
pub fn offset(port: u16) -> u8 {
    u8::try_from(port.wrapping_sub(BASE) & 7).expect("masked to 3 bits")
}

pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    pub fn new(out: Box<dyn Write + Send>) -> std::io::Result<Serial> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        Ok(Serial {
            uart: vm_superio::Serial::new(EventFdTrigger(evt), out),
        })
    }

    /// A UART with the registers of a snapshot's (its output goes to `out`).
    pub fn restore(
        out: Box<dyn Write + Send>,
        state: &crate::snapshot::SerialState,
    ) -> std::io::Result<Serial> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = vm_superio::Serial::from_state(
            &s,
            EventFdTrigger(evt),
            vm_superio::serial::NoEvents,
            out,
        )
        .map_err(|e| std::io::Error::other(format!("the snapshot's serial state: {e:?}")))?;
        Ok(Serial { uart })
    }

    /// The registers, for a snapshot.
    pub fn state(&self) -> crate::snapshot::SerialState {
        let s = self.uart.state();
        crate::snapshot::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// The eventfd to register as the IRQ 4 irqfd.
    pub fn irq_evt(&self) -> std::io::Result<EventFd> {
        self.uart.interrupt_evt().0.try_clone()
    }

    /// `offset` from BASE: 0 to 7.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // An output error (a full disk, a closed pipe) must not take the VM down.
        let _ = self.uart.write(offset, value);
    }
}

/// A sink that passes on the first `max` bytes, then one marker line, then nothing: the
/// guest's console output cannot grow a host file without bound. Never fails, so a
/// guest cannot make the UART error out either.
pub struct BoundedWriter<W: Write> {
    inner: W,
    written: u64,
    max: u64,
}

impl<W: Write> BoundedWriter<W> {
    pub fn new(inner: W, max: u64) -> BoundedWriter<W> {
        BoundedWriter {
            inner,
            written: 0,
            max,
        }
    }
}

impl<W: Write> Write for BoundedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written < self.max {
            let room = usize::try_from(self.max - self.written)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let _ = self.inner.write_all(&buf[..room]);
            self.written += room as u64;
            if self.written >= self.max {
                let marker = format!(
                    "\n[hull-vmm: console truncated at {} bytes; further output discarded]\n",
                    self.max
                );
                let _ = self.inner.write_all(marker.as_bytes());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

/// A byte sink tests can read back.
#[derive(Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().expect("buffer lock").clone()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_stops_at_its_bound() {
        let sink = SharedBuffer::default();
        let mut w = BoundedWriter::new(sink.clone(), 100);
        for _ in 0..1000 {
            assert_eq!(w.write(b"0123456789abcdef").unwrap(), 16);
        }
        let out = sink.contents();
        assert!(out.starts_with(b"0123456789abcdef"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.len() < 200, "{}", text.len());
        assert!(text.ends_with("further output discarded]\n"), "{text}");
        assert_eq!(text.matches("truncated").count(), 1);
    }
}
