//! x86-64: vCPU set-up (`cpu`), the guest memory map (`layout`), loading Linux (`boot`,
//! with the GDT and the MP table), and the in-kernel interrupt controllers and timer
//! (`irqchip`).

pub mod boot;
pub mod cpu;
pub mod irqchip;
pub mod layout;
