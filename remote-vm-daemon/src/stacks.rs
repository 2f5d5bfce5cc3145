//! Lock holders' kernel stacks, and the watcher that looks at waits while
//! they last.
//!
//! - **Stacks.** After a run of the waits iterator, the writers holding the
//!   waited-for locks are looked at by the `holder_stacks` task iterator
//!   (`remote-vm-ebpf/src/programs/stacks.rs`): their kernel stacks, taken only
//!   when they were off CPU during the walk and only on a kernel whose
//!   unwinder is reliable (ORC), named from kallsyms or a `System.map`
//!   (`kernel::symbols`). Looks are kept per holder thread (`Looks`), so a
//!   stall, when it ends, carries the last look at its holder taken while it
//!   waited.
//! - **Watcher.** A remote access about to wait (its target's lock held by a
//!   writer, or a writer queued) writes one record to `WAIT_BEGUN`; the
//!   watcher wakes and runs both iterators half a threshold later, while the
//!   wait is still in progress if it is to become a stall — however seldom
//!   `/metrics` or `/stalls` is read. Runs are at least `MIN_GAP` apart: a
//!   local user who makes waits on their own processes gets no more than
//!   that (and with a threshold under `MIN_GAP`, a wait that begins right
//!   after a run may end before the next).
use std::{
    collections::{HashMap, VecDeque},
    io::Read,
    os::fd::AsRawFd,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use remote_vm_common::{
    StallEvent,
    user::rfc3339,
    classify::HolderKind,
    holder::{HolderStack, STACKS_WANTED_MAX, StackStatus},
};
use serde::Serialize;

use crate::{
    bpf::waits::{TaskIter, WaitsIter},
    kernel::symbols::{self, Symbols},
    stalls::realtime_of,
};

/// The program's name in the object.
pub const PROGRAM: &str = "holder_stacks";
/// The map of wanted thread ids.
pub const WANTED: &str = "STACK_WANTED";
/// The watcher's ring buffer.
pub const WAIT_BEGUN: &str = "WAIT_BEGUN";
/// The watcher's runs are at least this far apart.
/// (Every stall gets a look when the threshold is above it: the default 0.1 s
/// is. At 10 000 threads a run costs about 6.4 M guest instructions: see
/// docs/benchmarks.md.)
const MIN_GAP: Duration = Duration::from_millis(50);

/// A holder's kernel stack as `/stalls` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stack {
    /// When it was looked at (RFC 3339, UTC); `null`: not looked at.
    pub observed: Option<String>,
    /// Innermost first, `function+0xoffset`, `?` for a frame outside the
    /// kernel's text (a module's). Empty when not shown.
    pub frames: Vec<String>,
    /// Why no frames: `running on CPU 1`, `unwinder unreliable (guess)`, …
    pub unavailable: Option<String>,
}

impl Stack {
    fn not(why: impl Into<String>, observed_ns: Option<u64>) -> Stack {
        Stack {
            observed: observed_ns.map(|ns| rfc3339(realtime_of(ns))),
            frames: Vec::new(),
            unavailable: Some(why.into()),
        }
    }
}

struct Look {
    observed_ns: u64,
    stack: Stack,
}

/// Looks by holder thread: the newest `LOOKS_PER_THREAD` of each of at most
/// `THREADS_KEPT` threads (the ones looked at longest ago go first), so a
/// long stall keeps its holder's look however many others are taken meanwhile.
#[derive(Default)]
struct Looks {
    by_tid: HashMap<u32, VecDeque<Look>>,
}

const LOOKS_PER_THREAD: usize = 8;
const THREADS_KEPT: usize = 1024;

impl Looks {
    fn add(&mut self, tid: u32, look: Look) {
        if !self.by_tid.contains_key(&tid) && self.by_tid.len() >= THREADS_KEPT {
            let stalest = self.by_tid.iter().min_by_key(|(_, l)| l.front().map_or(0, |l| l.observed_ns)).map(|(t, _)| *t);
            if let Some(t) = stalest {
                self.by_tid.remove(&t);
            }
        }
        let looks = self.by_tid.entry(tid).or_default();
        looks.push_front(look);
        looks.truncate(LOOKS_PER_THREAD);
    }

    /// The newest look at `tid` in `[from_ns, to_ns]`.
    fn within(&self, tid: u32, from_ns: u64, to_ns: u64) -> Option<&Look> {
        self.by_tid.get(&tid)?.iter().find(|l| (from_ns..=to_ns).contains(&l.observed_ns))
    }
}

/// The stacks iterator and what it saw.
pub struct StackWatch {
    /// `Err`: why no stack is ever shown (then nothing runs).
    runner: Result<Mutex<Runner>, String>,
    /// The `/healthz` line (without taking the runner's lock).
    line: String,
    looks: Mutex<Looks>,
}

struct Runner {
    iter: TaskIter,
    wanted: BpfHashMap<MapData, u32, u32>,
    symbols: Symbols,
}

impl StackWatch {
    /// `attached`: the stacks iterator and its map (`Err`: why there are
    /// none: off, an unreliable unwinder, …); then this kernel's symbols.
    pub fn new(
        attached: Result<(TaskIter, BpfHashMap<MapData, u32, u32>), String>,
        symbols: impl FnOnce() -> Result<Symbols, String>,
    ) -> StackWatch {
        let runner = attached.and_then(|(iter, wanted)| Ok(Mutex::new(Runner { iter, wanted, symbols: symbols()? })));
        let line = match &runner {
            Ok(r) => {
                let r = r.lock().unwrap_or_else(PoisonError::into_inner);
                format!("stacks: holders' kernel stacks shown (ORC unwinder, symbols from {})", r.symbols.source.display())
            }
            Err(why) => format!("stacks: holders' kernel stacks not shown: {why}"),
        };
        StackWatch { runner, line, looks: Mutex::default() }
    }

    /// The `/healthz` and log line.
    pub fn line(&self) -> String {
        self.line.clone()
    }

    /// Looks at the stacks of the writers holding the locks `waits` wait for
    /// (the oldest waits' first, each thread once, at most `STACKS_WANTED_MAX`).
    pub fn observe(&self, waits: &[StallEvent]) {
        let Ok(runner) = &self.runner else { return };
        let mut seen = std::collections::HashSet::new();
        let tids: Vec<u32> = waits
            .iter()
            .filter(|e| e.holder.kind == HolderKind::Writer as u32 && e.holder.tid != 0)
            .map(|e| e.holder.tid)
            .filter(|t| seen.insert(*t))
            .take(STACKS_WANTED_MAX as usize)
            .collect();
        if tids.is_empty() {
            return;
        }
        let looks = runner.lock().unwrap_or_else(PoisonError::into_inner).run(&tids);
        let mut kept = self.looks.lock().unwrap_or_else(PoisonError::into_inner);
        for (tid, look) in looks {
            kept.add(tid, look);
        }
    }

    /// The last look at `tid` taken in `[from_ns, to_ns]`; without one, why.
    pub fn of(&self, tid: u32, from_ns: u64, to_ns: u64) -> Stack {
        if let Err(why) = &self.runner {
            return Stack::not(why.clone(), None);
        }
        if tid == 0 {
            return Stack::not("the holder is not identified", None);
        }
        let kept = self.looks.lock().unwrap_or_else(PoisonError::into_inner);
        kept.within(tid, from_ns, to_ns)
            .map(|l| l.stack.clone())
            .unwrap_or_else(|| Stack::not("not looked at while the wait lasted", None))
    }
}

impl Runner {
    fn run(&mut self, tids: &[u32]) -> Vec<(u32, Look)> {
        for tid in tids {
            if let Err(e) = self.wanted.insert(tid, 0, 0) {
                log::debug!("stacks: {WANTED}: {e}");
            }
        }
        let out = self.iter.run().and_then(read_looks);
        for tid in tids {
            let _ = self.wanted.remove(tid);
        }
        match out {
            Ok(raw) => raw.iter().map(|s| (s.tid, Look { observed_ns: s.observed_ns, stack: self.named(s) })).collect(),
            Err(e) => {
                log::warn!("stacks: the {PROGRAM} task iterator failed: {e}");
                Vec::new()
            }
        }
    }

    fn named(&self, s: &HolderStack) -> Stack {
        let cpu = || if s.cpu == u32::MAX { "a CPU".to_string() } else { format!("CPU {}", s.cpu) };
        let why = match StackStatus::from_u32(s.status) {
            StackStatus::Taken => {
                let ips = &s.ips[..(s.frames as usize).min(s.ips.len())];
                match symbols::frames(&self.symbols, s.sched_class, s.switch_ip, ips) {
                    Ok(frames) => {
                        return Stack { observed: Some(rfc3339(realtime_of(s.observed_ns))), frames, unavailable: None };
                    }
                    Err(why) => why,
                }
            }
            StackStatus::Running => format!("running on {}", cpu()),
            StackStatus::RanDuring => format!("ran on {} while its stack was read", cpu()),
            StackStatus::Failed => "the kernel gave no stack".to_string(),
            StackStatus::Unknown => "task_struct.on_cpu is not known here".to_string(),
        };
        Stack::not(why, Some(s.observed_ns))
    }
}

/// The iterator's records, read to the end.
fn read_looks(mut input: impl Read) -> std::io::Result<Vec<HolderStack>> {
    let mut bytes = Vec::new();
    let size = std::mem::size_of::<HolderStack>();
    input.by_ref().take((STACKS_WANTED_MAX as usize * size) as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes
        .chunks_exact(size)
        .take(STACKS_WANTED_MAX as usize)
        // SAFETY: a whole record; any bit pattern is a valid HolderStack.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) })
        .collect())
}

/// Starts the watcher: it owns `ring` and its own handle on the waits
/// iterator. `threshold_ns`: the stall threshold.
pub fn spawn_watcher(ring: RingBuf<MapData>, waits: WaitsIter, stacks: Arc<StackWatch>, threshold_ns: u64) {
    let spawned = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || watch(ring, &waits, &stacks, threshold_ns));
    if let Err(e) = spawned {
        log::warn!("waits will be looked at only when /metrics or /stalls is read: cannot start the watcher: {e}");
    }
}

fn watch(mut ring: RingBuf<MapData>, waits: &WaitsIter, stacks: &StackWatch, threshold_ns: u64) {
    let half = Duration::from_nanos(threshold_ns / 2);
    // The next run, and whether waits began since it was set (they get a run
    // of their own after it: one that began just before a run may not be
    // asleep yet when the run looks).
    let (mut due, mut again): (Option<Instant>, bool) = (None, false);
    let mut last_run: Option<Instant> = None;
    loop {
        match due {
            // A run is set: sleep until then; records that come meanwhile
            // are read after (they cannot bring it forward), not one wake-up each.
            Some(d) => std::thread::sleep(d.saturating_duration_since(Instant::now())),
            None => {
                let mut pfd = libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd. Its result is seen in what the ring holds.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
            }
        }
        let mut begun = false;
        while ring.next().is_some() {
            begun = true;
        }
        let now = Instant::now();
        // Half a threshold after the first wait began (the record's own time
        // is when the holder was seen; the delay to here is small), never
        // sooner than MIN_GAP after the last run: a wait that begins alone is
        // looked at in time whatever the threshold; waits that keep beginning
        // get a run every MIN_GAP at most.
        let next = |now: Instant, last: Option<Instant>| {
            let at = now + half;
            last.map_or(at, |l| at.max(l + MIN_GAP))
        };
        if begun {
            match due {
                None => due = Some(next(now, last_run)),
                Some(_) => again = true,
            }
        }
        if due.is_some_and(|d| now >= d) {
            last_run = Some(now);
            match waits.read() {
                Ok(w) => stacks.observe(&w.listed),
                Err(e) => log::debug!("watch: task iterator: {e}"),
            }
            due = again.then(|| next(Instant::now(), last_run));
            again = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(ns: u64) -> Look {
        Look { observed_ns: ns, stack: Stack::not(format!("look {ns}"), None) }
    }

    #[test]
    fn a_stall_finds_its_holders_newest_look_within_the_wait() {
        let mut looks = Looks::default();
        for ns in [10, 20, 30] {
            looks.add(7, look(ns));
        }
        looks.add(8, look(25));
        let at = |tid, from, to| looks.within(tid, from, to).map(|l| l.observed_ns);
        assert_eq!(at(7, 0, 100), Some(30));
        assert_eq!(at(7, 11, 29), Some(20));
        assert_eq!(at(7, 31, 100), None, "none taken while it waited");
        assert_eq!(at(8, 0, 100), Some(25));
        assert_eq!(at(9, 0, 100), None);
    }

    #[test]
    fn looks_are_bounded_per_thread_and_in_threads_the_stalest_going_first() {
        let mut looks = Looks::default();
        for ns in 0..(LOOKS_PER_THREAD as u64 + 5) {
            looks.add(1, look(ns));
        }
        assert_eq!(looks.by_tid[&1].len(), LOOKS_PER_THREAD);
        // Many other holders looked at later: thread 1's looks stay until it
        // is the one looked at longest ago.
        for tid in 2..(THREADS_KEPT as u32 + 1) {
            looks.add(tid, look(1000 + u64::from(tid)));
        }
        assert_eq!(looks.by_tid.len(), THREADS_KEPT);
        assert!(looks.within(1, 0, u64::MAX).is_some());
        looks.add(5000, look(9000));
        assert_eq!(looks.by_tid.len(), THREADS_KEPT);
        assert!(looks.within(1, 0, u64::MAX).is_none(), "the stalest thread went");
        assert!(looks.within(2, 0, u64::MAX).is_some());
    }
}
