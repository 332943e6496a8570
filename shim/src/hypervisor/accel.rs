//! Chooses hardware KVM or QEMU's TCG: KVM only where `/dev/kvm` can run a stock Linux
//! guest. A PVM-backed `/dev/kvm` (module kvm_pvm) exists but can't, and neither can a
//! host without vmx/svm.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The accelerator this host supports, with the reason when it is TCG.
    pub fn detect() -> (Accel, &'static str) {
        if !Path::new("/dev/kvm").exists() {
            return (Accel::Tcg, "/dev/kvm does not exist");
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            return (
                Accel::Tcg,
                "/dev/kvm is PVM-backed (kvm_pvm) and cannot boot a stock guest",
            );
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if !has_virt_flag(&cpuinfo) {
            return (Accel::Tcg, "the CPU has no vmx/svm");
        }
        (Accel::Kvm, "")
    }

    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

fn has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The host TSC frequency in kHz, which a microvm guest under TCG needs on its cmdline
/// (`tsc_early_khz`), or it hangs calibrating the TSC.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz(&cpuinfo)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_flags() {
        assert!(has_virt_flag("flags\t\t: fpu vme svm lm\n"));
        assert!(!has_virt_flag("flags\t\t: fpu vme lm\nmodel name: svm\n"));
    }

    #[test]
    fn tsc_from_cpuinfo() {
        assert_eq!(
            parse_cpu_mhz("model\t: x\ncpu MHz\t\t: 2596.122\n"),
            Some(2_596_122)
        );
        assert_eq!(parse_cpu_mhz("nothing"), None);
    }
}
