//! What the daemon's own programs cost on this host: the kernel's BPF run-time
//! statistics (`run_cnt`, `run_time_ns` of each program, read with the recursion
//! misses), exported as `remote_vm_probe_runs_total{probe}` and
//! `remote_vm_probe_run_seconds_total{probe}` while the kernel collects them.
//!
//! Collecting costs every BPF program on the host two clock reads per run, so it
//! is off unless asked for: `self_stats = true` holds a `BPF_ENABLE_STATS` file
//! descriptor for the daemon's lifetime (the kernel switches collection off
//! when the last holder closes it, even after SIGKILL). That needs
//! CAP_SYS_ADMIN, which the shipped unit does not grant (docs/probes-and-kernels.md, "Probe costs": the drop-in).
//! Collection switched on outside the daemon counts too: by the sysctl
//! (`kernel.bpf_stats_enabled` reads 1), or by another holder of a descriptor,
//! which the sysctl does not show: then by the programs' own counts, the runs
//! advancing with the hits.
use std::{os::fd::OwnedFd, sync::Mutex};

/// The sysctl that reads 1 while the kernel collects run-time statistics.
pub const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Whether the kernel collects, and why (or why not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collecting {
    /// By this daemon's `BPF_ENABLE_STATS` descriptor.
    Held,
    /// Switched on by the sysctl.
    Sysctl,
    /// The runs advance: another process holds collection on.
    Advancing,
    No(String),
}

pub struct RunStats {
    /// The `BPF_ENABLE_STATS` descriptor, while held.
    held: Option<OwnedFd>,
    /// Why `self_stats = true` could not switch collection on.
    refused: Option<String>,
    sysctl: std::path::PathBuf,
    /// The (hits, runs) summed over the programs at the last look, and whether
    /// the runs advanced with the hits then.
    last: Mutex<Option<(u64, u64, bool)>>,
}

impl RunStats {
    /// With `asked` (`self_stats = true`): switch collection on for as long as
    /// this value lives. Must run while the daemon still has its capabilities.
    pub fn enable(asked: bool) -> RunStats {
        let (held, refused) = if asked {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => (Some(fd), None),
                Err(e) => {
                    let why = match e.io_error.raw_os_error() {
                        Some(libc::EPERM) => format!("BPF_ENABLE_STATS: {} (needs CAP_SYS_ADMIN: see docs/probes-and-kernels.md, \"Probe costs\")", e.io_error),
                        _ => format!("BPF_ENABLE_STATS: {}", e.io_error),
                    };
                    log::warn!("self_stats = true, but probe run statistics are off: {why}");
                    (None, Some(why))
                }
            }
        } else {
            (None, None)
        };
        RunStats {
            held,
            refused,
            sysctl: STATS_SYSCTL.into(),
            last: Mutex::new(None),
        }
    }

    /// Whether the kernel collects now, given the programs' summed hits and runs
    /// (`None`: not read this time; the last look's counts decide).
    pub fn collecting(&self, counts: Option<(u64, u64)>) -> Collecting {
        if self.held.is_some() {
            return Collecting::Held;
        }
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if std::fs::read_to_string(&self.sysctl).is_ok_and(|v| v.trim() == "1") {
            // The sysctl explains the runs: no other holder is known of.
            if let Some((h, r)) = counts {
                *last = Some((h, r, false));
            }
            return Collecting::Sysctl;
        }
        let advancing = match (*last, counts) {
            // Every hit since the last look counted as a run (a kprobe pair
            // runs twice per hit): someone held collection on throughout.
            (Some((h0, r0, _)), Some((h, r))) if h > h0 => {
                let advancing = r.saturating_sub(r0) >= h - h0;
                *last = Some((h, r, advancing));
                advancing
            }
            // No run since: the last verdict stands.
            (Some((_, _, was)), _) => was,
            (None, Some((h, r))) => {
                *last = Some((h, r, false));
                false
            }
            (None, None) => false,
        };
        if advancing {
            return Collecting::Advancing;
        }
        Collecting::No(match &self.refused {
            Some(why) => why.clone(),
            None => "kernel.bpf_stats_enabled = 0 and the run counts do not advance (self_stats = true switches them on while the daemon runs)".into(),
        })
    }

    /// The `/healthz` line (from the last look's counts).
    pub fn line(&self) -> String {
        match self.collecting(None) {
            Collecting::Held => "probe costs: collected (self_stats = true: this daemon switched the kernel's BPF run-time statistics on)".into(),
            Collecting::Sysctl => "probe costs: collected (the kernel's BPF run-time statistics are on: kernel.bpf_stats_enabled = 1)".into(),
            Collecting::Advancing => "probe costs: collected (the run counts advance: another process switched the kernel's BPF run-time statistics on)".into(),
            Collecting::No(why) => format!("probe costs: absent ({why})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysctl_decides_when_nothing_is_held() {
        let dir = std::env::temp_dir().join(format!("rvm-runstats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sysctl = dir.join("bpf_stats_enabled");
        let mut r = RunStats::enable(false);
        r.sysctl = sysctl.clone();
        std::fs::write(&sysctl, "1\n").unwrap();
        assert_eq!(r.collecting(Some((0, 0))), Collecting::Sysctl);
        std::fs::write(&sysctl, "0\n").unwrap();
        assert!(r.line().starts_with("probe costs: absent (kernel.bpf_stats_enabled = 0 "), "{}", r.line());
        // Another holder: the runs advance with the hits; the verdict stands
        // while nothing runs, and falls when hits come without runs — or with
        // fewer (switched off part-way).
        assert!(matches!(r.collecting(Some((10, 0))), Collecting::No(_)));
        assert_eq!(r.collecting(Some((15, 5))), Collecting::Advancing);
        assert_eq!(r.collecting(Some((15, 5))), Collecting::Advancing);
        assert_eq!(r.collecting(None), Collecting::Advancing);
        assert_eq!(r.collecting(Some((17, 9))), Collecting::Advancing);
        assert!(matches!(r.collecting(Some((20, 11))), Collecting::No(_)));
        assert!(matches!(r.collecting(Some((25, 11))), Collecting::No(_)));
        r.refused = Some("BPF_ENABLE_STATS: Operation not permitted (os error 1) (needs CAP_SYS_ADMIN: …)".into());
        assert_eq!(r.line(), "probe costs: absent (BPF_ENABLE_STATS: Operation not permitted (os error 1) (needs CAP_SYS_ADMIN: …))");
        std::fs::remove_file(&sysctl).unwrap();
        assert!(matches!(r.collecting(None), Collecting::No(_)));
    }
}
