//! The standard process metrics (`catalog::PROCESS`), read from `/proc/self`
//! on each scrape and written by the same writer as ours. Nothing here needs
//! `/proc/stat` (hidden under the unit's `ProcSubset=pid`): the boot time comes
//! from the clocks.
use remote_vm_common::catalog::{self as cat, Metric};

use super::exposition::Family;

/// What `/proc/self/stat` says (fields after the command name).
#[derive(Debug, Default, PartialEq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name may contain spaces and
/// parentheses: the fields start after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): field N is f[N - 3].
    let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: n(14)?,
        stime_ticks: n(15)?,
        threads: n(20)?,
        start_ticks: n(22)?,
        vsize: n(23)?,
        rss_pages: n(24)?,
    })
}

/// The soft `Max open files` of `/proc/PID/limits`.
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as u64)
}

fn clock(id: libc::clockid_t) -> Option<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct we pass.
    (unsafe { libc::clock_gettime(id, &mut ts) } == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// The families of `catalog::PROCESS` this process can read now; what cannot
/// be read is left out, never zero.
pub fn collect() -> Vec<Family> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok().and_then(|t| parse_stat(&t));
    let tick = sysconf(libc::_SC_CLK_TCK);
    let page = sysconf(libc::_SC_PAGESIZE);
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|t| parse_max_fds(&t));
    let boot = clock(libc::CLOCK_REALTIME).zip(clock(libc::CLOCK_BOOTTIME)).map(|(now, up)| now - up);
    let mut out = Vec::new();
    let mut push = |m: &'static Metric, value: Option<super::exposition::Value>| {
        if let Some(v) = value {
            let mut f = Family::new(m);
            f.push(&[], v);
            out.push(f);
        }
    };
    let s = stat.as_ref();
    push(
        &cat::PROCESS_CPU,
        s.zip(tick).map(|(s, t)| ((s.utime_ticks + s.stime_ticks) as f64 / t as f64).into()),
    );
    push(&cat::PROCESS_OPEN_FDS, open_fds.map(Into::into));
    push(&cat::PROCESS_MAX_FDS, max_fds.map(Into::into));
    push(&cat::PROCESS_VIRTUAL_MEMORY, s.map(|s| s.vsize.into()));
    push(&cat::PROCESS_RESIDENT_MEMORY, s.zip(page).map(|(s, p)| (s.rss_pages * p).into()));
    push(
        &cat::PROCESS_START_TIME,
        s.zip(tick).zip(boot).map(|((s, t), b)| ((b + s.start_ticks as f64 / t as f64).round() as u64).into()),
    );
    push(&cat::PROCESS_THREADS, s.map(|s| s.threads.into()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 12345 6000000 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime_ticks: 7,
                stime_ticks: 3,
                threads: 5,
                start_ticks: 12345,
                vsize: 6_000_000,
                rss_pages: 321,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn max_fds_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
    }

    #[test]
    fn this_process_is_readable() {
        let names: Vec<&str> = collect().iter().map(|f| f.metric.name).collect();
        let all: Vec<&str> = cat::PROCESS.iter().map(|m| m.name).collect();
        assert_eq!(names, all);
    }
}
