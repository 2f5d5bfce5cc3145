//! Stalls: a remote reader waiting on another process's mmap_lock. A thread of
//! the target holds the lock for write (`munlock()` of a large mlocked region,
//! then, with a target of its own, `mlock2()` of the populated region; timed by
//! its own clock) while this process reads the target's
//! `/proc/PID/cmdline`. The workload's own timings decide how many stalls there
//! were; the daemon must count exactly those.
use std::time::Duration;

use anyhow::Result;
use remote_vm_common::{Interface, catalog as cat, classify::HolderKind, user::rfc3339_ms};

use super::harness::{
    CLOCKS_APART_NS, DAEMON_LOG, Daemon, LISTEN, Report, SOCKET, delta, delta_sum, expected_holder, pin_to_cpu0,
};
use crate::{
    classes::Kernel,
    prom::{self, Scrape},
    stall::{HOLDER_COMM, Kind, StallTarget},
};

/// `GET /stalls` on the daemon's Unix socket, parsed.
pub(super) fn stalls_page() -> Result<serde_json::Value> {
    let (status, body) = prom::get(SOCKET, "/stalls")?;
    anyhow::ensure!(status == 200, "GET /stalls: {status}");
    Ok(serde_json::from_str(&body)?)
}

/// `GET /stalls`' `recent`, once it holds `want` entries (the daemon reads its
/// ring buffer on a thread of its own) or after 5 s.
pub(super) fn stall_log(want: usize) -> Result<Vec<serde_json::Value>> {
    stall_log_of(want, |_| true)
}

/// [`stall_log`]'s entries that `keep` picks, once there are `want` of them
/// (the list also holds earlier rounds' stalls) or after 5 s.
pub(super) fn stall_log_of(want: usize, keep: impl Fn(&serde_json::Value) -> bool) -> Result<Vec<serde_json::Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let recent = stalls_page()?["recent"].as_array().cloned().unwrap_or_default();
        let kept: Vec<serde_json::Value> = recent.into_iter().filter(|s| keep(s)).collect();
        if kept.len() >= want || std::time::Instant::now() > deadline {
            return Ok(kept);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `check` found FOLL_ANON's value in BTF (not on 6.1, where it is a
/// `#define`): without it a stall's interface can only be `other`.
pub(super) fn foll_anon_known(report: &Report) -> bool {
    report.check["btf"]
        .as_array()
        .is_some_and(|lines| lines.iter().any(|l| l["line"].as_str().is_some_and(|l| l.starts_with("btf: FOLL_ANON = "))))
}

/// Large enough that munlock() holds the lock for tens of ms even natively.
pub(super) const REGION_MB: usize = 256;
/// Holds shorter than this are too close to scheduling noise to test with.
const MIN_HOLD_NS: u64 = 20_000_000;

pub(super) fn stalls(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    let Some(kernel) = kernel else { return Ok(()) };
    let mut target = StallTarget::spawn(REGION_MB)?;
    // The holder with each round's daemon on one CPU: off CPU whenever the
    // daemon looks at its stack.
    pin_to_cpu0(target.tid as u32, false)?;
    // Calibrate: two holds alone; the shorter decides the thresholds.
    let hold = target.hold()?.min(target.hold()?);
    println!("vmtest: stalls: munlock of {REGION_MB} MiB holds the mmap_lock for write {:.1} ms", hold as f64 / 1e6);
    report.check("stalls.hold_long_enough", true, hold >= MIN_HOLD_NS);
    if hold < MIN_HOLD_NS {
        return Ok(());
    }
    // A wait of most of the hold is a stall at hold/4, and not at 4 × hold.
    for (name, threshold) in [("stalls.below", hold / 4), ("stalls.above", hold * 4)] {
        let mut attempt = 1;
        while round(report, &mut target, kernel, name, "munlock", threshold, hold, attempt < ATTEMPTS)? == Round::Undecidable {
            attempt += 1;
        }
    }
    drop(target);
    // The reverse hold: mlock2(MLOCK_ONFAULT) of the same region, populated
    // and unlocked (`Kind::Mlock`).
    let mut target = StallTarget::spawn_kind(Kind::Mlock { region_mb: REGION_MB })?;
    pin_to_cpu0(target.tid as u32, false)?;
    let hold = target.hold()?.min(target.hold()?);
    println!("vmtest: stalls: mlock2 of {REGION_MB} MiB holds the mmap_lock for write {:.1} ms", hold as f64 / 1e6);
    report.check("stalls.mlock.hold_long_enough", true, hold >= MIN_HOLD_NS);
    if hold >= MIN_HOLD_NS {
        let mut attempt = 1;
        while round(report, &mut target, kernel, "stalls.mlock", "mlock2", hold / 4, hold, attempt < ATTEMPTS)? == Round::Undecidable {
            attempt += 1;
        }
    }
    Ok(())
}

/// Rounds run for one threshold at most: a round whose read's duration
/// cannot decide the ground truth (between the threshold and twice it, or a
/// blocking kernel's read shorter than half the hold: the reader was scheduled
/// late) is run again, with a daemon of its own, instead of being checked.
const ATTEMPTS: u32 = 3;

#[derive(PartialEq)]
enum Round {
    Checked,
    Undecidable,
}

/// One read of the target's cmdline during one hold, under a daemon whose
/// stall threshold is `threshold_ns`. With `may_retry`, a round whose timing
/// decides nothing checks nothing and says so.
#[allow(clippy::too_many_arguments)]
fn round(
    report: &mut Report,
    target: &mut StallTarget,
    kernel: Kernel,
    name: &str,
    syscall: &'static str,
    threshold_ns: u64,
    hold: u64,
    may_retry: bool,
) -> Result<Round> {
    let config = format!("[stalls]\nthreshold_seconds = {:.6}\n", threshold_ns as f64 / 1e9);
    let mut daemon = Daemon::start(&config, &[])?;
    pin_to_cpu0(daemon.child.id(), true)?;
    let result = (|| -> Result<Round> {
        let before = Scrape::fetch(LISTEN)?;
        target.start_hold()?;
        // Well inside the hold: the holder is in munlock() by now.
        std::thread::sleep(Duration::from_nanos(hold / 8));
        let took = target.read_cmdline()?;
        let held = target.end_hold()?;
        let after = Scrape::fetch(LISTEN)?;
        // SAFETY: no preconditions.
        let reader_tid = unsafe { libc::gettid() } as u64;
        println!(
            "vmtest: {name}: threshold {:.1} ms, hold {:.1} ms, cmdline read took {:.1} ms",
            threshold_ns as f64 / 1e6,
            held as f64 / 1e6,
            took as f64 / 1e6
        );
        // Ground truth from the workload's clocks. The read's wait is at most
        // the time it took, and all of it but a few µs: taking twice the
        // threshold, its first access stalled (the second finds the lock free);
        // under the threshold, nothing stalled; in between cannot be decided.
        let truth = if took >= 2 * threshold_ns {
            Some(1u64)
        } else if took < threshold_ns {
            Some(0)
        } else {
            None
        };
        // Patched with the argv page resident: the lockless path, no wait at all.
        let blocks = !kernel.is_patched();
        if may_retry && (truth.is_none() || (blocks && took < hold / 2)) {
            println!("vmtest: {name}: a read of {:.1} ms decides nothing here: once more", took as f64 / 1e6);
            return Ok(Round::Undecidable);
        }
        // The stall log: the same number of stalls, naming who read whom.
        let recent = stall_log(truth.unwrap_or(0) as usize)?;
        // The watcher shares CPU 0 with the holder, which is in the kernel
        // for the whole hold: where it was not scheduled before the wait
        // ended (a loaded host, a kernel without preemption), the round
        // decides nothing about it.
        if may_retry && truth == Some(1) && recent.first().and_then(|s| watched(s, threshold_ns)) == Some(false) {
            println!("vmtest: {name}: the watcher did not run during the wait: once more");
            return Ok(Round::Undecidable);
        }
        report.check(format!("{name}.reader_blocked"), blocks, took >= hold / 2);
        let want = truth.map_or("undecidable".to_string(), |t| t.to_string());
        report.check(
            format!("{name}.stalls_total{{lock_mode=read}}"),
            &want,
            delta_sum(&before, &after, cat::STALLS.name, &[("lock_mode", cat::LOCK_READ)]),
        );
        report.check(format!("{name}.stalls_logged"), &want, recent.len());
        // Identities: on the Unix socket (above), not over TCP to a request
        // that did not authenticate.
        report.check(format!("{name}.stalls_over_tcp_unauthenticated"), 403, prom::get(LISTEN, "/stalls")?.0);
        if let (Some(1), Some(s)) = (truth, recent.first()) {
            let me = std::process::id() as u64;
            let comm = std::fs::read_to_string("/proc/self/comm")?.trim().to_string();
            let got = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            report.check(format!("{name}.stall.reader.pid"), me, got(&s["reader"]["pid"]));
            report.check(format!("{name}.stall.reader.tid"), reader_tid, got(&s["reader"]["tid"]));
            report.check(format!("{name}.stall.reader.comm"), &comm, s["reader"]["comm"].as_str().unwrap_or(""));
            report.check(format!("{name}.stall.target.pid"), target.pid() as u64, got(&s["target"]["pid"]));
            report.check(format!("{name}.stall.target.comm"), &comm, s["target"]["comm"].as_str().unwrap_or(""));
            // cmdline needs FOLL_ANON's value from BTF: without it, `other`.
            let interface = if foll_anon_known(report) { Interface::Cmdline } else { Interface::Other }.label();
            report.check(format!("{name}.stall.interface"), interface, s["interface"].as_str().unwrap_or(""));
            report.check(format!("{name}.stall.lock_mode"), cat::LOCK_READ, s["lock_mode"].as_str().unwrap_or(""));
            // The holder: the target's thread in munlock() or mlock2() (not
            // its main thread), a writer, exactly, over the whole region.
            let h = &s["holder"];
            let want = expected_holder(HolderKind::Writer, true, target.tid as u64, target.pid() as u64, HOLDER_COMM, false)
                .in_syscall(syscall, target.range);
            want.check_identity(report, &format!("{name}.stall.holder"), h);
            want.check_doing(report, &format!("{name}.stall.holder"), h);
            // Nothing was scraped during the hold: the watcher, woken when the
            // wait began, looked at the holder half a threshold in (its
            // observation replaced the one at the wait's start) and at its stack.
            let ms = |v: &serde_json::Value| v.as_str().and_then(rfc3339_ms);
            let waited_ms = (s["waited_seconds"].as_f64().unwrap_or(0.0) * 1e3) as i64;
            let (ended, observed) = (ms(&s["ended"]), ms(&h["observed"]));
            println!("vmtest: {name}: holder observed {:?} ms after the wait began ({waited_ms} ms)", observed.zip(ended).map(|(o, e)| o - (e - waited_ms)));
            if want.kind == HolderKind::Writer.label() {
                report.check(format!("{name}.stall.holder.observed_by_the_watcher"), true, watched(s, threshold_ns).unwrap_or(false));
            } else {
                // A lock whose words the daemon cannot decode (PREEMPT_RT):
                // no holder to look at, nothing wakes the watcher, and no
                // observation time is shown.
                report.check(format!("{name}.stall.holder.observed"), "null", h["observed"].to_string());
            }
            want.check_stack(report, &format!("{name}.stall.holder"), h);
            report.check(
                format!("{name}.stalls_total{{lock_mode=read,op={}}}", want.op),
                1,
                delta(&before, &after, cat::STALLS.name, &[("lock_mode", cat::LOCK_READ), ("op", want.op)]),
            );
            report.check(format!("{name}.stall.access"), cat::LOCK_READ, s["access"].as_str().unwrap_or(""));
            // The wait lies between the threshold and the read's own duration.
            let waited = (s["waited_seconds"].as_f64().unwrap_or(0.0) * 1e9) as u64;
            report.check(format!("{name}.stall.waited_within_the_read"), true, waited >= threshold_ns && waited <= took + CLOCKS_APART_NS);
            report.check(format!("{name}.stall.not_killed"), false, s["killed"].as_bool().unwrap_or(true));
            // And one warn line in the daemon's log.
            let log = std::fs::read_to_string(DAEMON_LOG)?;
            let line = format!("stall: {comm} (pid {me} tid {reader_tid}) waited ");
            report.check(format!("{name}.stall.logged_once"), 1, log.lines().filter(|l| l.contains(&line)).count());
        }
        // Both remote accesses of the read took the lock, or neither did.
        let waits = if blocks { 2 } else { 0 };
        report.check(
            format!("{name}.mmap_lock_waits"),
            waits,
            delta(
                &before,
                &after,
                &cat::MMAP_LOCK_WAIT.count(),
                &[("context", cat::CONTEXT_REMOTE), ("mode", cat::LOCK_READ)],
            ),
        );
        Ok(Round::Checked)
    })();
    daemon.stop(report, name)?;
    result
}

/// Whether the stall record `s` shows its holder (a writer) observed by the
/// watcher: half a threshold or more into the wait, before it ended. `None`:
/// a holder of another kind (PREEMPT_RT: nothing wakes the watcher).
fn watched(s: &serde_json::Value, threshold_ns: u64) -> Option<bool> {
    let h = &s["holder"];
    if h["kind"].as_str() != Some(HolderKind::Writer.label()) {
        return None;
    }
    let ms = |v: &serde_json::Value| v.as_str().and_then(rfc3339_ms);
    let waited_ms = (s["waited_seconds"].as_f64().unwrap_or(0.0) * 1e3) as i64;
    Some(match (ms(&s["ended"]), ms(&h["observed"])) {
        // ±1 ms each: the times are whole milliseconds.
        (Some(end), Some(obs)) => obs + 2 >= end - waited_ms + (threshold_ns / 2_000_000) as i64 && obs <= end + 1,
        _ => false,
    })
}
