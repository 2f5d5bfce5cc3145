//! Waits in progress (the task iterator), the holder behind them, and the
//! interfaces a stall names. Ground truth from the workload's own clocks:
//!
//! - **write hold**: a thread of the target holds its mmap_lock for write for
//!   ≥ 2 s (one `mprotect()` merging many single-page VMAs, timed by the
//!   holder) while three readers of known tid wait: its `/proc/PID/cmdline`,
//!   its memory through `/proc/PID/mem`, and `PTRACE_PEEKDATA` — the last two
//!   inside the VMAs the hold write-locks, so that on a patched kernel they
//!   fall back and wait too while the cmdline read takes the lockless path.
//!   A scrape in the middle of the hold must count exactly the readers that
//!   wait and list them with the holder; afterwards each waiting reader is
//!   exactly one stall naming its interface.
//! - **reader-owned**: a thread holds the lock for read for seconds
//!   (`MADV_POPULATE_READ`), another queues for write behind it, then a cmdline
//!   read queues behind the writer: `readers`, `writer_waiting`.
//! - **reader-owned by munmap()**: the same with `munmap()` of a populated
//!   region as the read hold (the kernel downgrades to the read lock before
//!   it zaps): a short hold, checked on the stall alone.
//! - **outside the host PID namespace**: waits in progress are not reported,
//!   and `check` says why.
use std::{
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use remote_vm_common::{Interface, Point, catalog as cat, classify::HolderKind};
use serde_json::Value;

use super::{
    harness::{
        CLOCKS_APART_NS, DAEMON, Daemon, LISTEN, Report, delta, delta_sum, delta_value, expected_holder, pin_to_cpu0, range_of,
        range_text, skips_possible, wait_end_skips, counted_or_lost, within_lost,
    },
    stalls::{stall_log, stalls_page},
};
use crate::{
    classes::Kernel,
    prom::Scrape,
    stall::{self, HOLDER_COMM, Kind, READ_HOLDER_COMM, StallTarget, WRITE_WAITER_COMM},
    stress,
};

/// The hold asked for (the target's calibration aims above it, but a first
/// hold can come out shorter; ≥ 2 s is checked); the scrape comes `MID`
/// after the readers start.
const HOLD_MS: u64 = 3000;
const MID: Duration = Duration::from_millis(1200);
/// The unmap hold's region: populated, so it takes RAM (the guests have 1 GiB).
const UNMAP_MB: usize = 256;
/// Readers start this long after the holder said `go` (it is in the syscall).
const SETTLE: Duration = Duration::from_millis(100);

pub(super) fn waits(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    if let Some(kernel) = kernel {
        write_hold(report, kernel)?;
        reader_owned(report, kernel)?;
        reader_owned_by_munmap(report, kernel)?;
    }
    outside_the_host_pid_namespace(report)
}

/// What one reader did: its tid, when it started and how long it took.
struct Read {
    tid: u64,
    took: Duration,
}

/// A reader thread: `go` tells it to read, `ready` says whether its
/// preparation worked, `handle` gives what the read did.
struct Reader {
    go: mpsc::Sender<()>,
    ready: mpsc::Receiver<Result<()>>,
    handle: JoinHandle<Result<Read>>,
}

/// A reader thread named `name` that runs `read` once told to, after `prepare`.
fn reader(
    name: &str,
    prepare: impl FnOnce() -> Result<()> + Send + 'static,
    read: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<Reader> {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let handle = std::thread::Builder::new().name(name.into()).spawn(move || -> Result<Read> {
        // SAFETY: no preconditions.
        let tid = unsafe { libc::gettid() } as u64;
        let prepared = prepare();
        let failed = prepared.is_err();
        let _ = ready_tx.send(prepared);
        if failed {
            bail!("not prepared");
        }
        go_rx.recv().context("never told to read")?;
        let start = Instant::now();
        read()?;
        Ok(Read { tid, took: start.elapsed() })
    })?;
    Ok(Reader { go: go_tx, ready: ready_rx, handle })
}

fn peek(pid: i32, addr: u64) -> Result<()> {
    // SAFETY: PEEKDATA returns the word or -1 with errno set; errno cleared first.
    unsafe {
        *libc::__errno_location() = 0;
        let v = libc::ptrace(libc::PTRACE_PEEKDATA, pid, addr as *mut libc::c_void, 0);
        let errno = *libc::__errno_location();
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
        if v == -1 && errno != 0 {
            bail!("PTRACE_PEEKDATA at {addr:#x}: {}", std::io::Error::from_raw_os_error(errno));
        }
    }
    Ok(())
}

fn read_mem(pid: u32, addr: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, addr).with_context(|| format!("/proc/{pid}/mem at {addr:#x}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The entry of `list` whose reader is `tid`.
fn by_reader(list: &[Value], tid: u64) -> Option<&Value> {
    list.iter().find(|w| u(&w["reader"]["tid"]) == tid)
}

fn write_hold(report: &mut Report, kernel: Kernel) -> Result<()> {
    let name = "waits.write_hold";
    let mut daemon = Daemon::start("[stalls]\nthreshold_seconds = 0.1\n", &[])?;
    let result = (|| -> Result<()> {
        let mut target = StallTarget::spawn_merge(HOLD_MS)?;
        let pid = target.pid();
        // The holder with the daemon on one CPU: off CPU whenever the daemon
        // looks at its stack.
        pin_to_cpu0(target.tid as u32, false)?;
        pin_to_cpu0(daemon.child.id(), true)?;
        let known = super::stalls::foll_anon_known(report);
        let me = std::process::id() as u64;
        // The readers: (thread name, interface), started together mid-hold;
        // the address inside the hold's VMAs is known once it starts.
        let addr = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (a1, a2) = (addr.clone(), addr.clone());
        let at = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::SeqCst);
        let cmdline = reader("rd-cmdline", || Ok(()), move || stall::read_cmdline(pid).map(drop))?;
        let mem = reader("rd-mem", || Ok(()), move || read_mem(pid, at(&a1)))?;
        let ptrace = reader("rd-ptrace", move || stress::seize(pid as i32).map(drop), move || peek(pid as i32, at(&a2)))?;
        let readers = [("rd-cmdline", Interface::Cmdline, cmdline), ("rd-mem", Interface::Mem, mem), ("rd-ptrace", Interface::Ptrace, ptrace)];
        for (n, _, r) in &readers {
            r.ready.recv().with_context(|| format!("{n} ended"))?.with_context(|| n.to_string())?;
        }
        let before = Scrape::fetch(LISTEN)?;
        target.start_hold()?;
        addr.store(target.inside.context("the merge hold names no address")?, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(SETTLE);
        // Before the first go: a reader woken by it may begin waiting before
        // this thread runs again (a wait older than `started` taken after the
        // sends failed the range check below in one run of the 7.3 guest).
        let started = Instant::now();
        for (_, _, r) in &readers {
            r.go.send(())?;
        }
        std::thread::sleep(MID);
        let mid = Scrape::fetch(LISTEN)?;
        let page = stalls_page()?;
        let mid_done = stall::monotonic_ns();
        let mid_age = started.elapsed();
        let mut reads = Vec::new();
        for (n, interface, r) in readers {
            let read = r.handle.join().map_err(|_| anyhow::anyhow!("{n} panicked"))??;
            reads.push((n, interface, read));
        }
        let held = target.end_hold_timed()?;
        let after = Scrape::fetch(LISTEN)?;
        println!(
            "vmtest: {name}: hold {:.2} s; reads took {}",
            held.ns as f64 / 1e9,
            reads.iter().map(|(n, _, r)| format!("{n} {:.2} s", r.took.as_secs_f64())).collect::<Vec<_>>().join(", ")
        );
        // The scrape fell inside the hold (by the holder's clock), else nothing below is decided.
        report.check(format!("{name}.hold_at_least_2s"), true, held.ns >= 2_000_000_000);
        report.check(format!("{name}.scrape_within_the_hold"), true, mid_done < held.end_ns);
        // Unpatched, every reader waits; patched, the cmdline read is lockless
        // and the two inside the write-locked VMAs fall back and wait.
        let waits = |i: Interface| !kernel.is_patched() || i != Interface::Cmdline;
        let waiting: Vec<&(&str, Interface, Read)> = reads.iter().filter(|(_, i, _)| waits(*i)).collect();
        for (n, i, r) in &reads {
            report.check(format!("{name}.{n}.blocked"), waits(*i), r.took >= MID);
        }
        report.check(format!("{name}.waiters"), waiting.len(), mid.value(cat::MMAP_LOCK_WAITERS.name, &[]).unwrap_or(-1.0));
        let oldest = mid.value(cat::MMAP_LOCK_OLDEST_WAIT.name, &[]).unwrap_or(-1.0);
        // The oldest wait began after the readers were told to go and before the scrape.
        let oldest_ok = if waiting.is_empty() { oldest == 0.0 } else { oldest >= 1.0 && oldest <= mid_age.as_secs_f64() };
        report.check(format!("{name}.oldest_wait_seconds_in_range"), true, oldest_ok);
        let in_progress = page["in_progress"].as_array().cloned().unwrap_or_default();
        report.check(format!("{name}.in_progress.len"), waiting.len(), in_progress.len());
        let iface = |i: Interface| if known { i } else { Interface::Other }.label();
        for (n, i, r) in &waiting {
            let Some(w) = by_reader(&in_progress, r.tid) else {
                report.check(format!("{name}.in_progress.{n}"), "listed", "missing");
                continue;
            };
            report.check(format!("{name}.in_progress.{n}.pid"), me, u(&w["reader"]["pid"]));
            report.check(format!("{name}.in_progress.{n}.comm"), n, s(&w["reader"]["comm"]));
            report.check(format!("{name}.in_progress.{n}.target"), pid as u64, u(&w["target"]["pid"]));
            // In mprotect() of the region it merges: that range.
            let want = expected_holder(HolderKind::Writer, true, target.tid as u64, 0, HOLDER_COMM, false).in_syscall("mprotect", target.range);
            want.check_identity(report, &format!("{name}.in_progress.{n}.holder"), &w["holder"]);
            want.check_doing(report, &format!("{name}.in_progress.{n}.holder"), &w["holder"]);
            want.check_stack(report, &format!("{name}.in_progress.{n}.holder"), &w["holder"]);
            report.check(format!("{name}.in_progress.{n}.writer_waiting"), want.writer_waiting, w["writer_waiting"] == true);
            report.check(format!("{name}.in_progress.{n}.interface"), iface(*i), s(&w["interface"]));
            let age = w["waiting_seconds"].as_f64().unwrap_or(-1.0);
            println!("vmtest: {name}: {n} waiting {age:.3} s at the scrape, {:.3} s after go", mid_age.as_secs_f64());
            report.check(format!("{name}.in_progress.{n}.waiting_seconds_in_range"), true, age >= 1.0 && age <= mid_age.as_secs_f64());
        }
        // Afterwards: each waiting reader is one stall — unless the kernel
        // skipped the program that ends its wait (preemptible kernels: the
        // readers wake together when the writer lets go), which it reports.
        let skipped = wait_end_skips(&before, &after);
        let counted = delta_sum(&before, &after, cat::STALLS.name, &[("lock_mode", cat::LOCK_READ)]);
        let stalls = counted.parse().unwrap_or(f64::NAN);
        if skipped > 0.0 {
            println!("vmtest: {name}: the kernel skipped {skipped} runs of the wait-end and exit programs; {stalls} of {} stalls counted", waiting.len());
            report.check(format!("{name}.skips_possible"), true, skips_possible());
        }
        report.check(
            format!("{name}.stalls_total{{lock_mode=read}}"),
            counted_or_lost(waiting.len(), skipped),
            within_lost(&counted, waiting.len(), skipped),
        );
        let log = stall_log(stalls as usize)?;
        report.check(format!("{name}.stalls_logged"), stalls as usize, log.len());
        for (n, i, r) in &waiting {
            let Some(st) = by_reader(&log, r.tid) else {
                if skipped == 0.0 {
                    report.check(format!("{name}.stall.{n}"), "logged", "missing");
                }
                continue;
            };
            report.check(format!("{name}.stall.{n}.interface"), iface(*i), s(&st["interface"]));
            let want = expected_holder(HolderKind::Writer, true, target.tid as u64, 0, HOLDER_COMM, false).in_syscall("mprotect", target.range);
            report.check(format!("{name}.stall.{n}.holder.tid"), want.tid, u(&st["holder"]["tid"]));
            want.check_doing(report, &format!("{name}.stall.{n}.holder"), &st["holder"]);
            want.check_stack(report, &format!("{name}.stall.{n}.holder"), &st["holder"]);
            let waited = st["waited_seconds"].as_f64().unwrap_or(0.0);
            println!("vmtest: {name}: {n} waited {waited:.6} s (the stall's waited_seconds) in a read of {:.6} s", r.took.as_secs_f64());
            report.check(format!("{name}.stall.{n}.waited_within_the_read"), true, waited >= 1.0 && waited <= r.took.as_secs_f64() + CLOCKS_APART_NS as f64 / 1e9);
        }
        Ok(())
    })();
    daemon.stop(report, name)?;
    result
}

fn reader_owned(report: &mut Report, kernel: Kernel) -> Result<()> {
    let name = "waits.reader_owned";
    let mut daemon = Daemon::start("[stalls]\nthreshold_seconds = 0.1\n", &[])?;
    let result = (|| -> Result<()> {
        let mut target = StallTarget::spawn_readers(HOLD_MS)?;
        let pid = target.pid();
        let Reader { go, ready, handle } = reader("rd-cmdline", || Ok(()), move || stall::read_cmdline(pid).map(drop))?;
        ready.recv()??;
        let before = Scrape::fetch(LISTEN)?;
        target.start_hold()?;
        target.start_writer()?;
        target.wait_writer_queued(Duration::from_secs(5))?;
        let started = Instant::now(); // before the go, as above
        go.send(())?;
        std::thread::sleep(MID);
        let mid = Scrape::fetch(LISTEN)?;
        let page = stalls_page()?;
        let mid_done = stall::monotonic_ns();
        let mid_age = started.elapsed();
        let read = handle.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        let queued = target.end_queued()?;
        let after = Scrape::fetch(LISTEN)?;
        println!(
            "vmtest: {name}: read hold {:.2} s, writer waited {:.2} s, cmdline read took {:.2} s",
            queued.holder.ns as f64 / 1e9,
            queued.writer.ns as f64 / 1e9,
            read.took.as_secs_f64()
        );
        report.check(format!("{name}.hold_at_least_2s"), true, queued.holder.ns >= 2_000_000_000);
        report.check(format!("{name}.scrape_within_the_hold"), true, mid_done < queued.holder.end_ns);
        // Patched: the resident argv page needs no lock at all; unpatched the
        // read queues behind the writer that waits for the read holder.
        let waits = !kernel.is_patched();
        report.check(format!("{name}.blocked"), waits, read.took >= MID);
        let n = usize::from(waits);
        report.check(format!("{name}.waiters"), n, mid.value(cat::MMAP_LOCK_WAITERS.name, &[]).unwrap_or(-1.0));
        let in_progress = page["in_progress"].as_array().cloned().unwrap_or_default();
        report.check(format!("{name}.in_progress.len"), n, in_progress.len());
        let log = stall_log(n)?;
        report.check(
            format!("{name}.stalls_total{{lock_mode=read}}"),
            n,
            delta_sum(&before, &after, cat::STALLS.name, &[("lock_mode", cat::LOCK_READ)]),
        );
        report.check(format!("{name}.stalls_logged"), n, log.len());
        if !waits {
            return Ok(());
        }
        // Seen in progress and in the stall alike: reader-owned, not exact,
        // the read holder as the last reader, a writer queued first.
        for (what, w) in [("in_progress", by_reader(&in_progress, read.tid)), ("stall", by_reader(&log, read.tid))] {
            check_reader_owned(report, &format!("{name}.{what}"), w, &target);
        }
        // Counted under the op of a reader-owned lock.
        let op = expected_holder(HolderKind::Readers, false, 0, 0, "", true).op;
        report.check(
            format!("{name}.stalls_total{{lock_mode=read,op={op}}}"),
            n,
            delta(&before, &after, cat::STALLS.name, &[("lock_mode", cat::LOCK_READ), ("op", op)]),
        );
        if let Some(w) = by_reader(&in_progress, read.tid) {
            let age = w["waiting_seconds"].as_f64().unwrap_or(-1.0);
            println!("vmtest: {name}: waiting {age:.3} s at the scrape, {:.3} s after go", mid_age.as_secs_f64());
            report.check(format!("{name}.in_progress.waiting_seconds_in_range"), true, age >= 1.0 && age <= mid_age.as_secs_f64());
        }
        Ok(())
    })();
    daemon.stop(report, name)?;
    result
}

/// A wait on a reader-owned lock (`w`, from `/stalls`; `None`: not listed)
/// against what `target` (readers or unmap kind) did: holder `readers`, not
/// exact, its read holder thread as the last reader, `writer_waiting`, and
/// the queued writer named — the target's writer thread in its `mprotect()`
/// of one page (nobody on PREEMPT_RT, whose queue is not read).
pub(super) fn check_reader_owned(report: &mut Report, prefix: &str, w: Option<&Value>, target: &StallTarget) {
    let Some(w) = w else {
        report.check(prefix.to_string(), "listed", "missing");
        return;
    };
    let h = &w["holder"];
    let want = expected_holder(HolderKind::Readers, false, target.tid as u64, 0, READ_HOLDER_COMM, true);
    want.check_identity(report, &format!("{prefix}.holder"), h);
    report.check(format!("{prefix}.writer_waiting"), want.writer_waiting, w["writer_waiting"] == true);
    want.check_doing(report, &format!("{prefix}.holder"), h);
    let q = &w["queued_writer"];
    let (tid, comm, syscall, range) = if want.writer_waiting {
        (target.writer_tid.unwrap_or(0) as u64, WRITE_WAITER_COMM, "mprotect", range_text(target.writer_range))
    } else {
        (0, "", "null", range_text(None))
    };
    report.check(format!("{prefix}.queued_writer.tid"), tid, u(&q["tid"]));
    report.check(format!("{prefix}.queued_writer.comm"), comm, s(&q["comm"]));
    let d = &q["doing"];
    report.check(format!("{prefix}.queued_writer.doing.syscall"), syscall, d["syscall"].as_str().unwrap_or("null"));
    report.check(format!("{prefix}.queued_writer.doing.range"), range, range_of(d));
}

/// Reader-owned by `munmap()`: the target unmaps a populated 256 MiB region
/// (the kernel zaps it under the read lock, downgraded), its writer queues an
/// `mprotect()` behind, then a cmdline read queues behind the writer. The hold
/// is short (about a tenth of a second under TCG), so nothing is scraped
/// during it: the threshold is 10 ms, and the stall alone must name the
/// unmapping thread as the last reader and the queued writer (unpatched;
/// patched: the resident argv page is read without the lock, no wait).
fn reader_owned_by_munmap(report: &mut Report, kernel: Kernel) -> Result<()> {
    for attempt in 1..=MUNMAP_ATTEMPTS {
        if munmap_round(report, kernel, attempt < MUNMAP_ATTEMPTS)? {
            break;
        }
    }
    Ok(())
}

/// Rounds of the munmap hold at most: a round whose writer did not queue
/// behind the zap (the holder entered `munmap()` later than the writer's
/// delay: a scheduling delay under TCG) decides nothing and is run again, with
/// a daemon and a target of its own.
const MUNMAP_ATTEMPTS: u32 = 3;

/// One round; `Ok(false)`: it decided nothing (and `may_retry`).
fn munmap_round(report: &mut Report, kernel: Kernel, may_retry: bool) -> Result<bool> {
    let name = "waits.reader_owned_munmap";
    let mut daemon = Daemon::start("[stalls]\nthreshold_seconds = 0.01\n", &[])?;
    let result = (|| -> Result<bool> {
        let mut target = StallTarget::spawn_kind(Kind::Unmap { region_mb: UNMAP_MB })?;
        let pid = target.pid();
        let Reader { go, ready, handle } = reader("rd-cmdline", || Ok(()), move || stall::read_cmdline(pid).map(drop))?;
        ready.recv()??;
        let before = Scrape::fetch(LISTEN)?;
        target.start_hold()?;
        target.start_writer()?;
        let queued_after = target.wait_writer_queued(Duration::from_secs(5));
        go.send(())?;
        let read = handle.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        let queued = target.end_queued()?;
        let after = Scrape::fetch(LISTEN)?;
        println!(
            "vmtest: {name}: munmap {:.1} ms, writer waited {:.1} ms, cmdline read took {:.1} ms",
            queued.holder.ns as f64 / 1e6,
            queued.writer.ns as f64 / 1e6,
            read.took.as_secs_f64() * 1e3
        );
        // The writer queued behind the zap (it slept in the kernel), and the
        // read began before the hold ended: else nothing below is decided.
        if queued_after.is_err() && may_retry {
            println!("vmtest: {name}: the writer did not queue behind the zap: once more");
            return Ok(false);
        }
        report.check(format!("{name}.writer_queued"), true, queued_after.is_ok());
        let waits = !kernel.is_patched();
        // Blocked: the read lasted into the writer's mprotect(), past 10 ms.
        report.check(format!("{name}.blocked"), waits, read.took >= Duration::from_millis(20));
        let n = usize::from(waits);
        let log = stall_log(n)?;
        report.check(format!("{name}.stalls_total{{lock_mode=read}}"), n, delta_sum(&before, &after, cat::STALLS.name, &[("lock_mode", cat::LOCK_READ)]));
        report.check(format!("{name}.stalls_logged"), n, log.len());
        if waits {
            check_reader_owned(report, &format!("{name}.stall"), by_reader(&log, read.tid), &target);
            let op = expected_holder(HolderKind::Readers, false, 0, 0, "", true).op;
            report.check(
                format!("{name}.stalls_total{{lock_mode=read,op={op}}}"),
                n,
                delta(&before, &after, cat::STALLS.name, &[("lock_mode", cat::LOCK_READ), ("op", op)]),
            );
        }
        Ok(true)
    })();
    daemon.stop(report, name)?;
    result
}

/// `check` in a PID namespace of its own, with the host's /proc and with a
/// /proc of its own (where `/proc/self/status` shows nothing nested): the
/// iterator would see only that namespace, so waits in progress are absent
/// and `check` says why; the start-up probe read still recognises its own
/// thread, so `patched` is what it is outside.
fn outside_the_host_pid_namespace(report: &mut Report) -> Result<()> {
    if !std::path::Path::new("/proc/self/ns/pid").exists() {
        println!("vmtest: waits.pid_namespace: this kernel has no PID namespaces (CONFIG_PID_NS): nothing to test");
        return Ok(());
    }
    let outside = s(&report.check["patched"]["value"]).to_string();
    for (name, args) in [
        ("waits.pid_namespace", &["-p", "-f"][..]),
        ("waits.pid_namespace_own_proc", &["-p", "-f", "--mount-proc"][..]),
    ] {
        let out = std::process::Command::new("unshare")
            .args(args)
            .args([DAEMON, "check", "--format", "json"])
            .output()
            .context("run unshare (busybox)")?;
        let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("check in a PID namespace printed no JSON: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        let Some(cov) = json["metrics"]
            .as_array()
            .and_then(|m| m.iter().find(|c| s(&c["what"]) == cat::Coverage::WaitsNow.what()))
        else {
            bail!("check reports no coverage {:?}", cat::Coverage::WaitsNow.what());
        };
        report.check(format!("{name}.exported"), false, cov["exported"] == true);
        let why = s(&cov["why"]);
        report.check(format!("{name}.why"), true, why.starts_with("the daemon is not in the host PID namespace"));
        report.check(format!("{name}.patched"), &outside, s(&json["patched"]["value"]));
    }
    Ok(())
}

/// Readers in the phantom suite: more than a kretprobe follows at once
/// (`maxactive`, by default max(10, 2 × possible CPUs)).
const PHANTOM_READERS: usize = 40;

/// `phantom`: waits whose end no program saw must not stay "in progress".
/// In kprobe mode, with more readers blocked at once than the kretprobes
/// follow, the wait ends (and the calls' ends) of those past `maxactive` are
/// never seen: their per-thread state says "waiting" for good. Ground truth
/// from the workload: during a write hold all readers wait (each blocked in
/// `/proc/PID/mem` inside the write-locked VMAs, patched or not); after it each
/// has read and sleeps on a channel, alive, waiting on nothing. The kprobe
/// links' `missed` must have counted first, else nothing is shown.
pub(super) fn phantom(report: &mut Report) -> Result<()> {
    use remote_vm_common::Family;
    let name = "phantom";
    let kprobe = |f: Family| f.mode("kprobe").map(|m| format!("{} = \"{}\"\n", f.name(), m.name)).unwrap_or_default();
    let config = format!(
        "[stalls]\nthreshold_seconds = 0.1\n[probes]\n{}{}",
        kprobe(Family::AccessRemoteVm),
        kprobe(Family::MmapLockRemote)
    );
    let mut daemon = Daemon::start(&config, &[])?;
    let result = (|| -> Result<()> {
        let mut target = StallTarget::spawn_merge(HOLD_MS)?;
        let pid = target.pid();
        let before = Scrape::fetch(LISTEN)?;
        target.start_hold()?;
        let inside = target.inside.context("the merge hold names no address")?;
        std::thread::sleep(SETTLE);
        let (done_tx, done_rx) = mpsc::channel::<Result<()>>();
        let mut releases = Vec::new();
        let mut threads = Vec::new();
        for i in 0..PHANTOM_READERS {
            let (release_tx, release_rx) = mpsc::channel::<()>();
            releases.push(release_tx);
            let done = done_tx.clone();
            threads.push(std::thread::Builder::new().name(format!("rd-phantom-{i}")).spawn(move || {
                let _ = done.send(read_mem(pid, inside));
                // Alive, asleep on something else (a futex: interruptible).
                let _ = release_rx.recv();
            })?);
        }
        std::thread::sleep(MID);
        let mid = Scrape::fetch(LISTEN)?;
        let mid_done = stall::monotonic_ns();
        let held = target.end_hold_timed()?;
        for _ in 0..PHANTOM_READERS {
            done_rx.recv_timeout(Duration::from_secs(60)).context("a reader never finished")??;
        }
        std::thread::sleep(Duration::from_millis(300));
        let after = Scrape::fetch(LISTEN)?;
        let page = stalls_page()?;
        // Ends no program saw: remote calls that began (their entry ran)
        // minus those whose return ran. The kernel counts the same skipped
        // returns in a kprobe link's `missed` only from Linux 6.7.
        let hits = |p: Point| delta_value(&before, &after, cat::PROBE_HITS.name, &[("probe", p.name())]);
        let unseen = hits(Point::AccessRemoteVmEntry) - hits(Point::AccessRemoteVmExit);
        let missed: f64 = [Point::MmapLockRemoteEnd, Point::AccessRemoteVmExit]
            .iter()
            .map(|p| delta_value(&before, &after, cat::PROBE_MISSES.name, &[("probe", p.name())]))
            .sum();
        let link_missed_counted = kernel_at_least(&report.release, (6, 7));
        println!(
            "vmtest: {name}: {PHANTOM_READERS} readers held {:.2} s; waiting mid-hold {}, after {}; ends unseen {unseen}, kretprobe runs missed {missed}",
            held.ns as f64 / 1e9,
            mid.value(cat::MMAP_LOCK_WAITERS.name, &[]).unwrap_or(-1.0),
            after.value(cat::MMAP_LOCK_WAITERS.name, &[]).unwrap_or(-1.0)
        );
        report.check(format!("{name}.scrape_within_the_hold"), true, mid_done < held.end_ns);
        report.check(format!("{name}.waiters_during_the_hold"), PHANTOM_READERS, mid.value(cat::MMAP_LOCK_WAITERS.name, &[]).unwrap_or(-1.0));
        // What makes the rest mean something: the kernel skipped returns.
        report.check(format!("{name}.ends_unseen"), true, unseen > 0.0);
        if link_missed_counted {
            report.check(format!("{name}.kretprobe_missed"), true, missed > 0.0);
        }
        report.check(format!("{name}.waiters_after"), 0, after.value(cat::MMAP_LOCK_WAITERS.name, &[]).unwrap_or(-1.0));
        report.check(format!("{name}.oldest_wait_after"), 0, after.value(cat::MMAP_LOCK_OLDEST_WAIT.name, &[]).unwrap_or(-1.0));
        report.check(format!("{name}.in_progress_after"), 0, page["in_progress"].as_array().map_or(usize::MAX, Vec::len));
        drop(releases);
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    })();
    daemon.stop(report, name)?;
    result
}

/// Whether a release string (`6.1.0-56-cloud-amd64`, `7.3.4`) is at least
/// `(major, minor)`; an unreadable one is not.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_at_least() {
        use super::kernel_at_least as at;
        assert!(at("6.7.0", (6, 7)));
        assert!(at("7.3.4", (6, 7)));
        assert!(at("6.12.117+deb12-cloud-amd64", (6, 7)));
        assert!(!at("6.1.0-56-cloud-amd64", (6, 7)));
        assert!(!at("6.6.99", (6, 7)));
        assert!(!at("garbage", (6, 7)));
    }
}
