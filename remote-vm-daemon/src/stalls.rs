//! The stall log: events from the kernel's `STALL_EVENTS` ring buffer, one per
//! remote access that waited at least the threshold for another process's
//! mmap_lock. Kept in memory (the last `stalls.keep`), logged (one warn line per
//! stall, rate-limited, suppressed lines counted) and served as `GET /stalls`.
//! Identities (pids, comms, cgroups) go here and to the log, never to metric labels.
use std::{
    collections::VecDeque,
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::cgroups::Paths;

use aya::maps::{MapData, RingBuf};
use remote_vm_common::{
    Interface, StallEvent, catalog,
    classify::HolderKind,
    holder::{self, Activity, ActivityKind, HolderOp},
};

use remote_vm_common::user::{human_bytes, rfc3339};

use crate::{
    kernel::syscalls,
    stacks::{Stack, StackWatch},
};
use serde::Serialize;

/// At most this many warn lines per `LOG_WINDOW`.
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reader {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The cgroup (v2) path, or `null` when it cannot be found (gone before it
    /// was looked up, no cgroup2 on the host; see `cgroups`).
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Target {
    /// 0 when unknown.
    pub pid: u32,
    pub comm: String,
}

/// Who held the lock: observed when the wait began, and again at each run of
/// the task iterator while it lasted (the last observation).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Holder {
    /// `writer`, `readers` (the identity, if any, is the last reader's), `none`
    /// (free when looked at), `unknown` (the lock's layout is not known).
    pub kind: &'static str,
    /// 0 when unknown.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The identity is the holder's for sure (a writer), not a hint.
    pub exact: bool,
    /// What the stall is counted under in `remote_vm_stalls_total{op}`.
    pub op: &'static str,
    /// What a writer was doing; `null` for other kinds.
    pub doing: Option<Doing>,
    /// When it was observed (RFC 3339, UTC); `null`: never.
    pub observed: Option<String>,
    /// A writer's kernel stack, the last look while the wait lasted, or why
    /// none is shown; `null` for other kinds.
    pub stack: Option<Stack>,
}

/// What a task was doing when observed, from its saved user registers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Doing {
    /// `syscall`, `fault` (the page-fault path), `kthread`, `other` (neither
    /// in a system call nor in a fault) or `unknown` (its registers could
    /// not be read here).
    pub what: &'static str,
    /// The system call's name from the daemon's architecture table (`null`:
    /// not a system call, or a number the table does not name).
    pub syscall: Option<&'static str>,
    pub nr: Option<u32>,
    /// The range the system call was passed (its address and length
    /// arguments), for the calls that take one; `null` otherwise.
    pub range: Option<Range>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Range {
    /// The start address in the holder's address space, `0x…`.
    pub address: String,
    /// Bytes.
    pub length: u64,
}

/// The writer first in the lock's queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Queued {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub doing: Option<Doing>,
}

/// What a wait on another process's mmap_lock is about: who waits, on whose
/// lock, who held it when the wait began, how. Shared by stalls and waits in
/// progress.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Wait {
    pub reader: Reader,
    pub target: Target,
    pub holder: Holder,
    /// A writer was first in the lock's queue when the holder was observed:
    /// readers queue behind it even while the lock is reader-owned (often the
    /// real cause). Best effort: the queue is read without its lock.
    pub writer_waiting: bool,
    /// That writer, when its identity is known; else `null`.
    pub queued_writer: Option<Queued>,
    /// `read`, or `write` (`expand_stack`).
    pub lock_mode: &'static str,
    /// The remote access's direction: `read` or `write`.
    pub access: &'static str,
    pub interface: &'static str,
}

/// One stall, as `/stalls` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stall {
    #[serde(flatten)]
    pub wait: Wait,
    pub waited_seconds: f64,
    /// RFC 3339, UTC.
    pub ended: String,
    /// The waiter was killed before it got the lock.
    pub killed: bool,
}

/// A wait still in progress, as `/stalls` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InProgress {
    #[serde(flatten)]
    pub wait: Wait,
    pub waiting_seconds: f64,
    /// RFC 3339, UTC.
    pub started: String,
}

struct Inner {
    recent: VecDeque<Stall>,
    window_start: Option<Instant>,
    logged_in_window: u32,
    suppressed: u64,
}

/// The last `keep` stalls, newest first.
pub struct StallLog {
    keep: usize,
    pub threshold_seconds: f64,
    inner: Mutex<Inner>,
}

impl StallLog {
    pub fn new(keep: usize, threshold_ns: u64) -> StallLog {
        StallLog {
            keep,
            threshold_seconds: threshold_ns as f64 / 1e9,
            inner: Mutex::new(Inner {
                recent: VecDeque::new(),
                window_start: None,
                logged_in_window: 0,
                suppressed: 0,
            }),
        }
    }

    /// Waits in progress from the task iterator's records, as `/stalls` shows
    /// them (cgroup paths from the caller's `cgroups`).
    pub fn in_progress(&self, events: &[StallEvent], cgroups: &mut Paths, stacks: Option<&StackWatch>) -> Vec<InProgress> {
        let now = Instant::now();
        events
            .iter()
            .map(|e| InProgress {
                // The stacks are looked at after the waits: any look since the wait began.
                wait: to_wait(e, cgroups.path(e.cgroup_id, now), stacks, u64::MAX),
                waiting_seconds: e.wait_ns as f64 / 1e9,
                started: rfc3339(realtime_of(e.end_ns.saturating_sub(e.wait_ns))),
            })
            .collect()
    }

    pub fn recent(&self) -> Vec<Stall> {
        self.inner.lock().map(|i| i.recent.iter().cloned().collect()).unwrap_or_default()
    }

    fn add(&self, stall: Stall, now: Instant) {
        let line = {
            let Ok(mut inner) = self.inner.lock() else { return };
            let line = inner.line(&stall, now);
            inner.recent.push_front(stall);
            while inner.recent.len() > self.keep {
                inner.recent.pop_back();
            }
            line
        };
        // Written after the lock is let go: a stalled stderr must not hold
        // up `/stalls`.
        if let Some(line) = line {
            log::warn!("{line}");
        }
    }
}

impl Inner {
    /// The warn line for `stall`, if the rate limit lets one through now.
    fn line(&mut self, stall: &Stall, now: Instant) -> Option<String> {
        let window_over = self.window_start.is_none_or(|start| now.duration_since(start) >= LOG_WINDOW);
        if window_over {
            self.window_start = Some(now);
            self.logged_in_window = 0;
        }
        if self.logged_in_window < LOG_BURST {
            self.logged_in_window += 1;
            let more = std::mem::take(&mut self.suppressed);
            let note = if more > 0 { format!(" ({more} earlier stalls not logged)") } else { String::new() };
            let w = &stall.wait;
            Some(format!(
                "stall: {} (pid {} tid {}) waited {:.3} s for the mmap_lock ({}) of {} (pid {}) reading {}; held by {} {} (pid {} tid {}){}{}{}",
                w.reader.comm,
                w.reader.pid,
                w.reader.tid,
                stall.waited_seconds,
                w.lock_mode,
                w.target.comm,
                w.target.pid,
                w.interface,
                w.holder.kind,
                w.holder.comm,
                w.holder.pid,
                w.holder.tid,
                w.holder.doing.as_ref().map(|d| format!(" in {}", d.short())).unwrap_or_default(),
                match (&w.queued_writer, w.writer_waiting) {
                    (Some(q), _) => format!(
                        ", a writer queued: {} (pid {} tid {}){}",
                        q.comm,
                        q.pid,
                        q.tid,
                        q.doing.as_ref().map(|d| format!(" in {}", d.short())).unwrap_or_default()
                    ),
                    (None, true) => ", a writer queued".to_string(),
                    (None, false) => String::new(),
                },
                note
            ))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Reads the ring buffer on a thread of its own until the process exits.
pub fn spawn_reader(ring: RingBuf<MapData>, log: Arc<StallLog>, stacks: Option<Arc<StackWatch>>) {
    let spawned = std::thread::Builder::new()
        .name("stalls".into())
        .spawn(move || read_loop(ring, &log, stacks.as_deref()));
    if let Err(e) = spawned {
        log::warn!("stall events will not be read: cannot start their thread: {e}");
    }
}

fn read_loop(mut ring: RingBuf<MapData>, log: &StallLog, stacks: Option<&StackWatch>) {
    // This thread's own: a walk here never waits for, nor holds up, a render.
    let mut cgroups = Paths::of_this_host();
    loop {
        let mut pfd = libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        // The events come without a wakeup: the timeout is what drains them.
        unsafe { libc::poll(&mut pfd, 1, remote_vm_common::STALL_POLL_MS as i32) };
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<StallEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole StallEvent (size checked); unaligned read.
            let e: StallEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            let stall = to_stall(&e, realtime_of(e.end_ns), cgroups.path(e.cgroup_id, Instant::now()), stacks);
            log.add(stall, Instant::now());
        }
    }
}

fn comm(bytes: &[u8; 16]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn mode(write: u32) -> &'static str {
    if write != 0 { catalog::LOCK_WRITE } else { catalog::LOCK_READ }
}

/// The part of an event stalls and waits in progress share.
/// `stacks`: the holder's looks, the last one taken from the wait's start to
/// `until_ns` is shown.
fn to_wait(e: &StallEvent, cgroup: Option<String>, stacks: Option<&StackWatch>, until_ns: u64) -> Wait {
    // A lock found free (or of unknown layout) says nothing of a holder: the
    // programs then write only its kind and op (the uncontended path stays
    // short), so the rest may be an earlier wait's and is not shown.
    let kind = HolderKind::from_u32(e.holder.kind);
    let held = matches!(kind, HolderKind::Writer | HolderKind::Readers);
    Wait {
        reader: Reader {
            pid: e.reader_tgid,
            tid: e.reader_tid,
            comm: comm(&e.reader_comm),
            cgroup,
        },
        target: Target {
            pid: e.target_tgid,
            comm: comm(&e.target_comm),
        },
        holder: Holder {
            kind: kind.label(),
            pid: if held { e.holder.tgid } else { 0 },
            tid: if held { e.holder.tid } else { 0 },
            comm: if held { comm(&e.holder.comm) } else { String::new() },
            exact: held && e.holder.exact != 0,
            op: if held { HolderOp::from_u32(e.holder.op) } else { HolderOp::Unknown }.label(),
            doing: if held { doing(&e.holder.activity) } else { None },
            observed: (held && e.holder.observed_ns != 0).then(|| rfc3339(realtime_of(e.holder.observed_ns))),
            stack: (kind == HolderKind::Writer)
                .then(|| stacks.map(|s| s.of(e.holder.tid, e.end_ns.saturating_sub(e.wait_ns), until_ns)))
                .flatten(),
        },
        writer_waiting: held && e.holder.writer_waiting != 0,
        queued_writer: (held && e.holder.queued_tid != 0).then(|| Queued {
            pid: e.holder.queued_tgid,
            tid: e.holder.queued_tid,
            comm: comm(&e.holder.queued_comm),
            doing: doing(&e.holder.queued),
        }),
        lock_mode: mode(e.lock_write),
        access: mode(e.access_write),
        interface: Interface::from_u32(e.interface).label(),
    }
}

/// An observation as `/stalls` shows it (`None`: not observed).
pub fn doing(a: &Activity) -> Option<Doing> {
    let what = a.kind();
    if what == ActivityKind::NotObserved {
        return None;
    }
    let syscall = (what == ActivityKind::Syscall).then(|| syscalls::name(a.nr)).flatten();
    Some(Doing {
        what: what.label(),
        syscall,
        nr: (what == ActivityKind::Syscall).then_some(a.nr),
        range: syscall.and_then(holder::range_args).map(|(addr, len)| Range {
            address: format!("{:#x}", a.args[addr]),
            length: a.args[len],
        }),
    })
}

impl Doing {
    /// Short, for a log line: see [`doing_short`].
    pub fn short(&self) -> String {
        doing_short(self.what, self.syscall, self.nr, self.range.as_ref().map(|r| r.length))
    }
}

/// What a task is doing in a few words, for a log line or `top` (which reads
/// it back from `/stalls`): `mprotect 1.2 GiB` (a call with its range's
/// length), `munlockall`, `syscall 999` (a number the table does not name),
/// `fault`.
pub fn doing_short(what: &str, syscall: Option<&str>, nr: Option<u32>, length: Option<u64>) -> String {
    match (syscall, nr, length) {
        (Some(name), _, Some(len)) => format!("{name} {}", human_bytes(len)),
        (Some(name), _, None) => name.to_string(),
        (None, Some(nr), _) => format!("syscall {nr}"),
        _ => what.to_string(),
    }
}

/// An event as `/stalls` shows it; `ended_unix_ns` its end on the wall clock.
pub fn to_stall(e: &StallEvent, ended_unix_ns: u128, cgroup: Option<String>, stacks: Option<&StackWatch>) -> Stall {
    Stall {
        wait: to_wait(e, cgroup, stacks, e.end_ns),
        waited_seconds: e.wait_ns as f64 / 1e9,
        ended: rfc3339(ended_unix_ns),
        killed: e.failed != 0,
    }
}

/// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) as nanoseconds since the epoch.
pub fn realtime_of(mono_ns: u64) -> u128 {
    let read = |id| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime fills the struct we pass.
        unsafe { libc::clock_gettime(id, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    let offset = read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC);
    (mono_ns as i128 + offset).max(0) as u128
}

/// `GET /stalls`.
#[derive(Debug, Serialize)]
pub struct StallsPage {
    pub threshold_seconds: f64,
    /// Waits in progress now, oldest first (at most `bpf::waits::LIST_MAX`);
    /// `null` when they cannot be seen (see `/healthz`).
    pub in_progress: Option<Vec<InProgress>>,
    /// Newest first.
    pub recent: Vec<Stall>,
    /// Events the ring buffer had no room for.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use remote_vm_common::classify::HolderSnap;

    use super::*;

    fn event() -> StallEvent {
        let mut reader_comm = [0u8; 16];
        reader_comm[..2].copy_from_slice(b"ps");
        let mut target_comm = [0u8; 16];
        target_comm[..4].copy_from_slice(b"java");
        StallEvent {
            end_ns: 0,
            wait_ns: 1_500_000_000,
            cgroup_id: 1,
            reader_tgid: 10,
            reader_tid: 11,
            target_tgid: 20,
            lock_write: 0,
            access_write: 0,
            interface: Interface::Cmdline as u32,
            failed: 0,
            _pad: 0,
            reader_comm,
            target_comm,
            holder: HolderSnap {
                kind: HolderKind::Writer as u32,
                exact: 1,
                tgid: 20,
                tid: 21,
                comm: target_comm,
                ..HolderSnap::default()
            },
        }
    }

    #[test]
    fn events_become_stalls() {
        let s = to_stall(&event(), 1_795_641_669_123_000_000, Some("/system.slice".into()), None);
        let (w, s) = (&s.wait, &s);
        assert_eq!(w.reader, Reader { pid: 10, tid: 11, comm: "ps".into(), cgroup: Some("/system.slice".into()) });
        assert_eq!(w.target, Target { pid: 20, comm: "java".into() });
        assert_eq!(
            w.holder,
            Holder { kind: "writer", pid: 20, tid: 21, comm: "java".into(), exact: true, op: "unknown", doing: None, observed: None, stack: None }
        );
        assert_eq!(w.queued_writer, None);
        assert_eq!((w.lock_mode, w.access, w.interface, w.writer_waiting), ("read", "read", "cmdline", false));
        assert_eq!(s.waited_seconds, 1.5);
        assert_eq!(s.ended, "2026-11-25T21:21:09.123Z");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn what_the_holder_and_the_queued_writer_were_doing() {
        use remote_vm_common::holder::{AX_IN_SYSCALL, Regs};
        let mut e = event();
        let munlock = Regs { ax: AX_IN_SYSCALL, orig_ax: libc::SYS_munlock as u64, args: [0x7f12_3400_0000, 256 << 20, 0] };
        e.holder.activity = Activity::of(false, Some(munlock));
        e.holder.op = HolderOp::Munlock as u32;
        e.holder.observed_ns = 1;
        e.holder.writer_waiting = 1;
        e.holder.queued_tgid = 20;
        e.holder.queued_tid = 22;
        e.holder.queued_comm[..6].copy_from_slice(b"mprot\0");
        let mprotect = Regs { ax: AX_IN_SYSCALL, orig_ax: libc::SYS_mprotect as u64, args: [0x1000, 4096, 3] };
        e.holder.queued = Activity::of(false, Some(mprotect));
        let s = to_stall(&e, 0, None, None);
        let h = &s.wait.holder;
        assert_eq!((h.op, h.observed.is_some()), ("munlock", true));
        let held = h.doing.as_ref().unwrap();
        assert_eq!(
            *held,
            Doing {
                what: "syscall",
                syscall: Some("munlock"),
                nr: Some(libc::SYS_munlock as u32),
                range: Some(Range { address: "0x7f1234000000".into(), length: 256 << 20 }),
            }
        );
        assert_eq!(held.short(), "munlock 256.0 MiB");
        let q = s.wait.queued_writer.as_ref().unwrap();
        assert_eq!((q.pid, q.tid, q.comm.as_str()), (20, 22, "mprot"));
        assert_eq!(q.doing.as_ref().unwrap().short(), "mprotect 4.0 KiB");
        // The log line says both.
        let line = StallLog::new(3, 1).inner.lock().unwrap().line(&s, Instant::now()).unwrap();
        assert!(line.contains("held by writer java (pid 20 tid 21) in munlock 256.0 MiB, a writer queued: mprot (pid 20 tid 22) in mprotect 4.0 KiB"), "{line}");
        // A fault, a kernel thread, an unnamed number: no range, never a wrong name.
        for (activity, short) in [
            (Activity::of(false, Some(Regs { ax: 0, orig_ax: 6, args: [1, 2, 3] })), "fault"),
            (Activity::of(true, None), "kthread"),
            (Activity::of(false, Some(Regs { ax: AX_IN_SYSCALL, orig_ax: 511, args: [1, 2, 3] })), "syscall 511"),
            (Activity::of(false, None), "unknown"),
        ] {
            let d = doing(&activity).unwrap();
            assert_eq!((d.short().as_str(), d.range.is_none()), (short, true));
        }
        assert_eq!(doing(&Activity::default()), None);
    }

    #[test]
    fn a_free_lock_names_no_holder_whatever_an_earlier_wait_left() {
        // The programs write only kind and op when the lock is free.
        let mut e = event();
        e.holder.activity = Activity::of(true, None);
        e.holder.writer_waiting = 1;
        e.holder.queued_tid = 9;
        e.holder.observed_ns = 5;
        for kind in [HolderKind::None, HolderKind::Unknown] {
            e.holder.kind = kind as u32;
            let h = to_stall(&e, 0, None, None).wait;
            assert_eq!(
                h.holder,
                Holder { kind: kind.label(), pid: 0, tid: 0, comm: String::new(), exact: false, op: "unknown", doing: None, observed: None, stack: None }
            );
            assert_eq!((h.writer_waiting, h.queued_writer), (false, None));
        }
    }

    #[test]
    fn waits_in_progress_and_stalls_share_their_fields() {
        let mut e = event();
        e.holder.kind = HolderKind::Readers as u32;
        e.holder.exact = 0;
        e.holder.writer_waiting = 1;
        e.cgroup_id = 0;
        e.end_ns = 10_000_000_000;
        e.wait_ns = 2_250_000_000;
        let log = StallLog::new(3, 100_000_000);
        let w = &log.in_progress(&[e], &mut Paths::at(None), None)[0];
        assert_eq!(w.waiting_seconds, 2.25);
        assert!(w.wait.writer_waiting);
        assert_eq!((w.wait.holder.kind, w.wait.holder.exact, w.wait.reader.cgroup.as_deref()), ("readers", false, None));
        // The JSON shape: one level, the wait's fields beside its times.
        let json = serde_json::to_value(w).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["access", "holder", "interface", "lock_mode", "queued_writer", "reader", "started", "target", "waiting_seconds", "writer_waiting"]
        );
        let stall = serde_json::to_value(to_stall(&e, 0, None, None)).unwrap();
        assert_eq!(stall["writer_waiting"], true);
        assert_eq!(stall["waited_seconds"], 2.25);
        assert!(stall.get("started").is_none() && stall.get("ended").is_some());
    }

    #[test]
    fn top_reads_what_stalls_serves() {
        let log = StallLog::new(3, 100_000_000);
        let mut e = event();
        e.holder.writer_waiting = 1;
        let page = StallsPage {
            threshold_seconds: 0.1,
            in_progress: Some(log.in_progress(&[e], &mut Paths::at(None), None)),
            recent: vec![to_stall(&e, 0, Some("/a".into()), None)],
            dropped: 7,
        };
        let json = serde_json::to_string(&page).unwrap();
        let top: crate::top::model::StallsPage = serde_json::from_str(&json).unwrap();
        assert_eq!((top.threshold_seconds, top.dropped), (0.1, 7));
        let (w, s) = (&top.in_progress.unwrap()[0], &top.recent[0]);
        for x in [w, s] {
            assert_eq!((x.reader.pid, x.reader.tid, x.reader.comm.as_str()), (10, 11, "ps"));
            assert_eq!((x.target.pid, x.target.comm.as_str()), (20, "java"));
            assert_eq!((x.holder.kind.as_str(), x.holder.tid, x.holder.exact), ("writer", 21, true));
            assert!(x.writer_waiting);
            assert_eq!((x.lock_mode.as_str(), x.interface.as_str()), ("read", "cmdline"));
        }
        assert_eq!((w.waiting_seconds, s.waited_seconds), (1.5, 1.5));
        assert_eq!(s.ended, "1970-01-01T00:00:00.000Z");
        assert!(!w.started.is_empty());
    }

    #[test]
    fn the_log_keeps_the_newest_and_limits_its_lines() {
        let log = StallLog::new(3, 100_000_000);
        let t0 = Instant::now();
        for i in 0..(LOG_BURST + 5) {
            let mut e = event();
            e.reader_tid = i;
            log.add(to_stall(&e, 0, None, None), t0);
        }
        let recent = log.recent();
        assert_eq!(recent.iter().map(|s| s.wait.reader.tid).collect::<Vec<_>>(), vec![LOG_BURST + 4, LOG_BURST + 3, LOG_BURST + 2]);
        assert_eq!(log.inner.lock().unwrap().suppressed, 5);
        // A new window logs again, saying how many were not logged.
        log.add(to_stall(&event(), 0, None, None), t0 + LOG_WINDOW);
        assert_eq!(log.inner.lock().unwrap().suppressed, 0);
    }
}
