//! The guest's own figures for the shim's metrics: memory from /proc/meminfo, load and
//! process count from /proc/loadavg, uptime from /proc/uptime.

use hull_protocols::agent::GuestStatsResponse;

/// A `/proc/meminfo` field in bytes (the file gives kB), if present.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kib = rest
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        kib.checked_mul(1024)
    })
}

/// The figures of this machine now; a file that can't be read leaves its fields at 0.
pub fn read() -> GuestStatsResponse {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let mut r = parse(&meminfo, &loadavg);
    r.uptime_ms = uptime_ms(&uptime);
    r
}

/// "12345.67 23456.78": seconds up, then seconds idle.
fn uptime_ms(uptime: &str) -> u64 {
    uptime
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(0, |s| (s * 1000.0) as u64)
}

fn parse(meminfo: &str, loadavg: &str) -> GuestStatsResponse {
    let mut r = GuestStatsResponse::new();
    r.mem_total_bytes = meminfo_bytes(meminfo, "MemTotal").unwrap_or(0);
    r.mem_available_bytes = meminfo_bytes(meminfo, "MemAvailable").unwrap_or(0);
    // "0.20 0.18 0.12 1/80 11206": three loads, then running/total scheduling entities.
    let mut f = loadavg.split_whitespace();
    let mut load = || f.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    r.load1 = load();
    r.load5 = load();
    r.load15 = load();
    r.processes = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .unwrap_or(0);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_meminfo_and_loadavg() {
        let meminfo =
            "MemTotal:         250000 kB\nMemFree:  1000 kB\nMemAvailable:     200000 kB\n";
        let r = parse(meminfo, "0.50 0.25 0.10 2/37 123\n");
        assert_eq!(r.mem_total_bytes, 250_000 * 1024);
        assert_eq!(r.mem_available_bytes, 200_000 * 1024);
        assert_eq!((r.load1, r.load5, r.load15), (0.5, 0.25, 0.1));
        assert_eq!(r.processes, 37);
        assert_eq!(uptime_ms("12345.67 23456.78\n"), 12_345_670);
        assert_eq!(uptime_ms("garbage"), 0);
    }

    #[test]
    fn a_prefix_is_not_a_field_and_garbage_gives_zeros() {
        assert_eq!(meminfo_bytes("MemTotalX: 5 kB\n", "MemTotal"), None);
        let r = parse("nonsense", "x y");
        assert_eq!((r.mem_total_bytes, r.load1, r.processes), (0, 0.0, 0));
    }
}
