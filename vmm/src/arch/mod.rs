//! What is particular to the guest's CPU architecture. hull-vmm runs x86-64 guests only;
//! everything that knows x86 (CPUID and MSRs, the Linux boot protocol and its zero page,
//! the MP table, the memory map, the in-kernel PIC/IOAPIC/PIT) lives below `x86_64`, so
//! the rest (devices, the machine, the jail) is what a second architecture would share.

pub mod x86_64;
