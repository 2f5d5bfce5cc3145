//! Effective capabilities of this process, from `/proc/self/status`.

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The `CapEff` mask, or `None` if it cannot be read.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Whether the effective set has `cap`.
pub fn has(cap: u32) -> bool {
    effective().is_some_and(|mask| mask & (1u64 << cap) != 0)
}

/// Capabilities that loading and attaching need and this process lacks:
/// CAP_BPF (maps, programs) and CAP_PERFMON (tracing programs), unless
/// CAP_SYS_ADMIN covers both.
pub fn missing_for_loading() -> Vec<&'static str> {
    missing_from(effective().unwrap_or(0))
}

pub fn missing_from(mask: u64) -> Vec<&'static str> {
    let has = |cap: u32| mask & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect()
}

/// Drops every capability of the calling thread (effective, permitted,
/// inheritable) and the ambient set, and sets no_new_privs. Threads inherit this,
/// so it runs before any other thread is started.
pub fn drop_all() -> std::io::Result<()> {
    use caps::CapSet;
    // Effective before permitted: the effective set must stay within it.
    for set in [CapSet::Ambient, CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
        caps::clear(None, set).map_err(std::io::Error::other)?;
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing_from(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_from(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert!(missing_from((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert!(missing_from(1 << CAP_SYS_ADMIN).is_empty());
    }
}
