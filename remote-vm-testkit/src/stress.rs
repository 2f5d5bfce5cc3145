//! The contention workload: a target whose threads churn its address space
//! (mmap/munmap, mprotect, madvise, page faults) so its mmap_lock is held for
//! write, and readers that behave like monitoring tools (`/proc/PID/cmdline`,
//! `environ`, `/proc/PID/mem`, ptrace PEEKDATA) at a set rate. It records its own
//! ground truth: the `__access_remote_vm()` calls it made (not syscalls) and each
//! read's latency seen from user space.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::FileExt,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::workload::PAGE;

#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct StressArgs {
    /// Threads churning the target's address space.
    #[arg(long, default_value_t = 2)]
    pub churn_threads: usize,
    /// Pause between churn iterations, microseconds (0: flat out).
    #[arg(long, default_value_t = 0)]
    pub churn_pause_us: u64,
    /// Reader threads (the first also does ptrace PEEKDATA).
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Reads per second, all readers together.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Resident memory the readers read, MiB.
    #[arg(long, default_value_t = 64)]
    pub memory_mb: usize,
    /// Back the read region with transparent huge pages (else MADV_NOHUGEPAGE).
    #[arg(long, default_value_t = false)]
    pub thp: bool,
    /// A thread of the target (`holder`) holds its mmap_lock for write this
    /// long, again and again (one `mprotect()` merging many VMAs; 0: no holder).
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub hold_ms: u64,
    /// Pause between the holder's holds, ms (its preparation comes on top).
    #[arg(long, default_value_t = 1000)]
    #[serde(default)]
    pub hold_gap_ms: u64,
}

impl StressArgs {
    /// As `--key value` arguments (for the kernel command line and back).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--churn-threads".into(),
            self.churn_threads.to_string(),
            "--churn-pause-us".into(),
            self.churn_pause_us.to_string(),
            "--readers".into(),
            self.readers.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--duration".into(),
            self.duration.to_string(),
            "--memory-mb".into(),
            self.memory_mb.to_string(),
        ];
        if self.thp {
            v.push("--thp".into());
        }
        v.extend(["--hold-ms".into(), self.hold_ms.to_string(), "--hold-gap-ms".into(), self.hold_gap_ms.to_string()]);
        v
    }
}

/// What one kind of read did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KindResult {
    pub reads: u64,
    pub errors: u64,
    /// `__access_remote_vm()` calls these reads made.
    pub calls: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StressResult {
    pub args: Option<StressArgs>,
    pub mem: KindResult,
    pub cmdline: KindResult,
    pub environ: KindResult,
    pub peek: KindResult,
    /// Every read's latency, nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
    pub seconds: f64,
    /// Churn iterations of the target (each: mmap, touch, mprotect, madvise, munmap).
    pub churn_ops: u64,
    /// Every read: when it started (`CLOCK_MONOTONIC` ns), how long it took (ns),
    /// its kind (`m`em, `c`mdline, `e`nviron, `p`eek) and whether it worked.
    #[serde(default)]
    pub reads: Vec<ReadRecord>,
    /// The holder's write holds, `[start, end)` in `CLOCK_MONOTONIC` ns (its clock).
    #[serde(default)]
    pub holds: Vec<(u64, u64)>,
    /// The target's threads by role: the holder (0: none), the churn threads.
    #[serde(default)]
    pub holder_tid: i32,
    #[serde(default)]
    pub churn_tids: Vec<i32>,
}

/// One read of the workload.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ReadRecord {
    pub start_ns: u64,
    pub took_ns: u64,
    pub kind: char,
    pub ok: bool,
}

/// What the target says when it stops.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TargetEnd {
    churn_ops: u64,
    holds: Vec<(u64, u64)>,
}

impl StressResult {
    pub fn calls(&self) -> u64 {
        self.mem.calls + self.cmdline.calls + self.environ.calls + self.peek.calls
    }

    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.latencies_ns.is_empty() {
            return 0;
        }
        let i = ((self.latencies_ns.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_ns[i.min(self.latencies_ns.len() - 1)]
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TargetInfo {
    region: u64,
    len: u64,
    idle_tid: i32,
    holder_tid: i32,
    churn_tids: Vec<i32>,
}

/// The environment the target gets: small and known, so one `environ` read is one call.
const TARGET_ENV: &[(&str, &str)] = &[("RVM_STRESS", "target"), ("LANG", "C")];

/// Runs in the target: maps and fills the read region, starts the churn threads
/// and an idle thread (for ptrace), prints its layout, and on stdin EOF prints
/// the churn count and exits.
pub fn target_main(args: &StressArgs) -> Result<()> {
    let len = args.memory_mb << 20;
    // SAFETY: anonymous mapping, checked.
    let region = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if region == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    let advice = if args.thp { libc::MADV_HUGEPAGE } else { libc::MADV_NOHUGEPAGE };
    // SAFETY: our own mapping.
    unsafe { libc::madvise(region, len, advice) };
    for off in (0..len).step_by(PAGE) {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile((region as *mut u8).add(off), (off / PAGE) as u8) };
    }
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let ops = std::sync::Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let (churn_tx, churn_rx) = std::sync::mpsc::channel();
    for _ in 0..args.churn_threads {
        let (stop, ops, pause, tx) = (stop.clone(), ops.clone(), args.churn_pause_us, churn_tx.clone());
        handles.push(std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tx.send(unsafe { libc::gettid() });
            churn(&stop, &ops, pause)
        }));
    }
    let churn_tids: Vec<i32> = (0..args.churn_threads).map(|_| churn_rx.recv()).collect::<Result<_, _>>()?;
    let holds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder_tid = if args.hold_ms > 0 {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, holds, want, gap) = (stop.clone(), holds.clone(), args.hold_ms, args.hold_gap_ms);
        handles.push(
            std::thread::Builder::new()
                .name(crate::stall::HOLDER_COMM.into())
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let _ = tx.send(unsafe { libc::gettid() });
                    if let Err(e) = hold_loop(&stop, &holds, want, gap) {
                        eprintln!("stress-target: holder: {e:#}");
                    }
                })?,
        );
        rx.recv()?
    } else {
        0
    };
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let idle_stop = stop.clone();
    handles.push(std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        while !idle_stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }));
    let idle_tid = tid_rx.recv()?;
    let info = TargetInfo {
        region: region as u64,
        len: len as u64,
        idle_tid,
        holder_tid,
        churn_tids,
    };
    println!("{}", serde_json::to_string(&info)?);
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let end = TargetEnd {
        churn_ops: ops.load(Ordering::Relaxed),
        holds: holds.lock().map(|h| h.clone()).unwrap_or_default(),
    };
    println!("{}", serde_json::to_string(&end)?);
    Ok(())
}

/// The holder: one merge `mprotect()` of about `want_ms` after another, each
/// timed by this thread, `gap_ms` apart (plus the preparation).
fn hold_loop(stop: &AtomicBool, holds: &std::sync::Mutex<Vec<(u64, u64)>>, want_ms: u64, gap_ms: u64) -> Result<()> {
    use crate::stall::{Holder, Merge, monotonic_ns};
    let mut merge = Merge::new(Duration::from_millis(want_ms))?;
    while !stop.load(Ordering::Relaxed) {
        merge.prepare()?;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let start = monotonic_ns();
        merge.hold()?;
        let end = monotonic_ns();
        holds.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((start, end));
        merge.held(Duration::from_nanos(end - start));
        let until = Instant::now() + Duration::from_millis(gap_ms);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// One churn iteration after another: map 1 MiB, fault it in, mprotect it,
/// madvise it away, unmap it. Every step but the faults takes the mmap_lock for
/// write.
fn churn(stop: &AtomicBool, ops: &AtomicU64, pause_us: u64) {
    const LEN: usize = 1 << 20;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: a private anonymous mapping of our own, released below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                continue;
            }
            for off in (0..LEN).step_by(PAGE) {
                std::ptr::write_volatile((p as *mut u8).add(off), 1);
            }
            libc::mprotect(p, LEN, libc::PROT_READ);
            libc::madvise(p, LEN, libc::MADV_DONTNEED);
            libc::munmap(p, LEN);
        }
        ops.fetch_add(1, Ordering::Relaxed);
        if pause_us > 0 {
            std::thread::sleep(Duration::from_micros(pause_us));
        }
    }
}

/// Runs the whole workload: the target, the readers, and the ground truth.
pub fn run(args: &StressArgs, progress: bool) -> Result<StressResult> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("stress-target")
        .args(args.to_args())
        .env_clear()
        .envs(TARGET_ENV.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn stress target")?;
    let mut out = BufReader::new(child.stdout.take().context("target stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let info: TargetInfo = serde_json::from_str(&line).with_context(|| format!("target said {line:?}"))?;
    let pid = child.id() as i32;
    let readers = args.readers.max(1);
    let per_reader = Duration::from_secs_f64(readers as f64 / args.rate.max(1) as f64);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let results: Vec<Result<(StressResult, Vec<u64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..readers)
            .map(|r| {
                let info = &info;
                s.spawn(move || reader(r, pid, info, per_reader, deadline, progress && r == 0))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("reader panicked"))).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    drop(child.stdin.take());
    line.clear();
    out.read_line(&mut line)?;
    let end: TargetEnd = serde_json::from_str(line.trim()).with_context(|| format!("target said {line:?}"))?;
    child.wait()?;
    let mut total = StressResult {
        args: Some(args.clone()),
        seconds,
        churn_ops: end.churn_ops,
        holds: end.holds,
        holder_tid: info.holder_tid,
        churn_tids: info.churn_tids.clone(),
        ..Default::default()
    };
    for r in results {
        let (part, lat) = r?;
        total.reads.extend(part.reads);
        for (t, p) in [
            (&mut total.mem, part.mem),
            (&mut total.cmdline, part.cmdline),
            (&mut total.environ, part.environ),
            (&mut total.peek, part.peek),
        ] {
            t.reads += p.reads;
            t.errors += p.errors;
            t.calls += p.calls;
        }
        total.latencies_ns.extend(lat);
    }
    total.latencies_ns.sort_unstable();
    total.reads.sort_by_key(|r| r.start_ns);
    Ok(total)
}

/// One reader: cycles through the kinds of read, paced to its share of the rate.
/// Reader 0 also seizes the target's idle thread and PEEKs through it.
fn reader(
    index: usize,
    pid: i32,
    info: &TargetInfo,
    period: Duration,
    deadline: Instant,
    progress: bool,
) -> Result<(StressResult, Vec<u64>)> {
    let mem = File::open(format!("/proc/{pid}/mem")).context("open mem")?;
    let mut r = StressResult::default();
    let mut lat = Vec::new();
    let peek_tid = if index == 0 { seize(info.idle_tid).ok() } else { None };
    let kinds: &[u8] = if peek_tid.is_some() { b"mcep" } else { b"mce" };
    let pages = (info.len as usize / PAGE).max(1);
    let mut next = Instant::now();
    let mut i: usize = index;
    let mut buf = vec![0u8; PAGE];
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        let kind = kinds[i % kinds.len()];
        let start_ns = crate::stall::monotonic_ns();
        let t0 = Instant::now();
        let (slot, ok, calls) = match kind {
            b'm' => {
                let addr = info.region + (((i * 7919) % pages) * PAGE) as u64;
                let ok = mem.read_at(&mut buf, addr).is_ok_and(|n| n == PAGE);
                (&mut r.mem, ok, 1)
            }
            // A 1-byte probe at arg_end-1, then one call for argv (< 1 page).
            b'c' => (&mut r.cmdline, read_once(&format!("/proc/{pid}/cmdline"), &mut buf), 2),
            // One call for an environment smaller than a page.
            b'e' => (&mut r.environ, read_once(&format!("/proc/{pid}/environ"), &mut buf), 1),
            _ => {
                let tid = peek_tid.unwrap_or(0);
                let addr = info.region + (((i * 104729) % pages) * PAGE) as u64;
                // SAFETY: PEEKDATA on a tracee we seized and stopped.
                let ok = unsafe {
                    *libc::__errno_location() = 0;
                    libc::ptrace(libc::PTRACE_PEEKDATA, tid, addr as *mut libc::c_void, std::ptr::null_mut::<libc::c_void>());
                    *libc::__errno_location() == 0
                };
                (&mut r.peek, ok, 1)
            }
        };
        let took_ns = t0.elapsed().as_nanos() as u64;
        lat.push(took_ns);
        slot.reads += 1;
        if ok {
            slot.calls += calls;
        } else {
            slot.errors += 1;
        }
        r.reads.push(ReadRecord { start_ns, took_ns, kind: kind as char, ok });
        i += 1;
        if progress && last_report.elapsed() > Duration::from_secs(5) {
            println!("stress: reader 0: {} reads so far", lat.len());
            last_report = Instant::now();
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    if let Some(tid) = peek_tid {
        // SAFETY: detaching our tracee.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
    }
    Ok((r, lat))
}

fn read_once(path: &str, buf: &mut [u8]) -> bool {
    File::open(path).and_then(|mut f| f.read(buf)).is_ok_and(|n| n > 0)
}

/// PTRACE_SEIZE + PTRACE_INTERRUPT one thread and wait for it to stop (then
/// PTRACE_PEEKDATA works on it; the process's other threads run on).
pub(crate) fn seize(tid: i32) -> Result<i32> {
    // SAFETY: ptrace and waitpid on a thread of our child.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 {
            bail!("PTRACE_SEIZE: {}", std::io::Error::last_os_error());
        }
        if libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) != 0 {
            bail!("PTRACE_INTERRUPT: {}", std::io::Error::last_os_error());
        }
        let mut status = 0;
        if libc::waitpid(tid, &mut status, libc::__WALL) != tid {
            bail!("waitpid: {}", std::io::Error::last_os_error());
        }
    }
    Ok(tid)
}
