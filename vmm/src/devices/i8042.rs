//! Just enough of the i8042 keyboard controller for a guest to reset the machine: the
//! command 0xfe written to port 0x64 pulses the reset line, which ends a hull VM (Linux
//! uses it with `reboot=k`). There is no keyboard.

use super::Action;

pub const DATA: u16 = 0x60;
pub const COMMAND: u16 = 0x64;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042;

impl I8042 {
    pub fn read(&mut self, _port: u16) -> u8 {
        // Status: output buffer empty, input buffer empty; data: nothing.
        0
    }

    pub fn write(&mut self, port: u16, value: u8) -> Action {
        if port == COMMAND && value == CMD_RESET_CPU {
            Action::Reset
        } else {
            Action::None
        }
    }
}
