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

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T21:42:32.123Z`.
pub fn rfc3339(unix_ns: u128) -> std::string::String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let ms = (unix_ns / 1_000_000 % 1000) as u32;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    std::format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}


/// The inverse of [`rfc3339`]: milliseconds since the epoch of such a time
/// (`None`: not one).
pub fn rfc3339_ms(t: &str) -> Option<i64> {
    let num = |r: core::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
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

    #[test]
    fn rfc3339_dates() {
        use super::rfc3339;
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_102_444_799_999_000_000), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_times_read_back_in_milliseconds() {
        use super::{rfc3339, rfc3339_ms};
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.234Z"), Some(1234));
        // date -u -d 2000-03-01 +%s: 951868800 (after a leap day).
        assert_eq!(rfc3339_ms("2000-03-01T00:00:00.000Z"), Some(951_868_800_000));
        // date -u -d 2026-12-06T15:28:59 +%s: 1796570939.
        assert_eq!(rfc3339_ms("2026-12-06T15:28:59.007Z"), Some(1_796_570_939_007));
        assert_eq!(rfc3339_ms("nonsense"), None);
        // What the daemon writes reads back to the millisecond.
        for ms in [0i64, 951_782_400_000, 1_796_570_939_007, 4_102_444_799_999] {
            assert_eq!(rfc3339_ms(&rfc3339(ms as u128 * 1_000_000)), Some(ms));
        }
    }
}
