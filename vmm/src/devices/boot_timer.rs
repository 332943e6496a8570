//! The boot-timer port: hull-agent writes `MAGIC` here once it serves, so the VMM can
//! report how long the guest took from VMM start to a working agent. A write of anything
//! else, or to this port on a VMM without the timer, does nothing.

pub const PORT: u16 = 0x440;
pub const MAGIC: u8 = 123;
