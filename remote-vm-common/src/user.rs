//! User space only (feature `user`): what the daemon and the tests need of the
//! shared types beyond the ABI — reading them out of BPF maps.

// SAFETY: plain #[repr(C)] data without padding invariants; any bit pattern is valid.
unsafe impl aya::Pod for crate::Control {}
unsafe impl aya::Pod for crate::SelfTest {}
unsafe impl aya::Pod for crate::stats::Stats {}
unsafe impl aya::Pod for crate::StallEvent {}

/// Bytes in binary units with one decimal (`1.2 GiB`, `256.0 MiB`, `4.0 KiB`),
/// whole below 1 KiB (`12 B`): how `/stalls`' readers (the log, `top`) say a
/// holder's range.
pub fn human_bytes(n: u64) -> std::string::String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return std::format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    std::format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(super::human_bytes(12), "12 B");
        assert_eq!(super::human_bytes(4096), "4.0 KiB");
        assert_eq!(super::human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(super::human_bytes(1_288_490_189), "1.2 GiB");
        assert_eq!(super::human_bytes(u64::MAX), "16.0 EiB");
    }
}
