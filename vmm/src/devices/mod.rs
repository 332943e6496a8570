//! Port-I/O devices and their dispatch. Every port the guest touches is served: unknown
//! ports read as all ones (absent hardware) and swallow writes, never an error.

pub mod boot_timer;
pub mod i8042;
pub mod serial;
pub mod virtio;

use i8042::I8042;
use serial::Serial;

/// What a device asks of the VMM after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// The guest asked for a reset: the VM ends.
    Reset,
    /// The guest's agent announced it is ready (boot-timer port).
    GuestReady,
}

pub struct PioBus {
    pub serial: Serial,
    pub i8042: I8042,
}

impl PioBus {
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        match port {
            serial::BASE..=serial::LAST if data.len() == 1 => {
                data[0] = self.serial.read(serial::offset(port))
            }
            i8042::DATA | i8042::COMMAND if data.len() == 1 => data[0] = self.i8042.read(port),
            _ => data.fill(0xff),
        }
    }

    pub fn write(&mut self, port: u16, data: &[u8]) -> Action {
        match port {
            serial::BASE..=serial::LAST if data.len() == 1 => {
                self.serial.write(serial::offset(port), data[0]);
                Action::None
            }
            i8042::DATA | i8042::COMMAND if data.len() == 1 => self.i8042.write(port, data[0]),
            boot_timer::PORT if data == [boot_timer::MAGIC] => Action::GuestReady,
            _ => Action::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> (PioBus, serial::SharedBuffer) {
        let out = serial::SharedBuffer::default();
        let s = Serial::new(Box::new(out.clone())).unwrap();
        (
            PioBus {
                serial: s,
                i8042: I8042,
            },
            out,
        )
    }

    #[test]
    fn serial_output_and_reset() {
        let (mut b, out) = bus();
        for c in b"ok\n" {
            assert_eq!(b.write(0x3f8, &[*c]), Action::None);
        }
        assert_eq!(out.contents(), b"ok\n");
        assert_eq!(b.write(0x64, &[0xfe]), Action::Reset);
        assert_eq!(b.write(0x64, &[0x00]), Action::None);
        assert_eq!(
            b.write(boot_timer::PORT, &[boot_timer::MAGIC]),
            Action::GuestReady
        );
        assert_eq!(b.write(boot_timer::PORT, &[0]), Action::None);
    }

    #[test]
    fn unknown_ports_and_odd_sizes_are_harmless() {
        let (mut b, _) = bus();
        let mut d = [0u8; 4];
        b.read(0x2f8, &mut d);
        assert_eq!(d, [0xff; 4]);
        b.read(0x3f8, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert_eq!(b.write(0xcf8, &[1, 2, 3, 4]), Action::None);
        assert_eq!(b.write(0x3f8, &[1, 2]), Action::None);
    }
}
