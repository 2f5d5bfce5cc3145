//! The in-kernel aggregates: counters and log2 histograms in per-CPU arrays,
//! indexed by the enums below. User space sums the CPUs on scrape.
//!
//! Every increment is one atomic add ([`bump`]): a per-CPU slot is not private
//! to one program run where programs can be preempted (trampoline programs run
//! with migration, not preemption, disabled; `PREEMPT_LAZY`/`PREEMPT_DYNAMIC`
//! kernels preempt them), and a plain `+=` would lose an increment when two runs
//! interleave on one CPU.
use core::sync::atomic::AtomicU64;
#[cfg(not(target_arch = "bpf"))]
use core::sync::atomic::Ordering;

use crate::{
    Point,
    classify::{Acquisition, FastRead, Outcome, Path, Reason},
    holder::HolderOp,
};

// `AtomicU64::from_ptr` needs the `u64`'s address aligned for the atomic.
const _: () = assert!(core::mem::align_of::<u64>() == core::mem::align_of::<AtomicU64>());

/// Sets `*slot` from 0 to `value` if it is 0, atomically: whether it did.
/// On BPF one `BPF_CMPXCHG` (Linux 5.12+): r0 holds the expected 0 and gets
/// the old value.
#[inline(always)]
pub fn claim(slot: &mut u64, value: u64) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        let mut prev: u64 = 0;
        // SAFETY: `slot` is a valid, aligned `u64`; the instruction compares it
        // with r0 and writes `value` if they are equal, and touches nothing else.
        unsafe {
            core::arch::asm!(
                "r0 = cmpxchg_64({p} + 0, r0, {v})",
                p = in(reg) core::ptr::from_mut(slot),
                v = in(reg) value,
                inout("r0") prev,
                options(nostack),
            );
        }
        prev == 0
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as in `bump`.
    unsafe { AtomicU64::from_ptr(slot) }.compare_exchange(0, value, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// Adds `n` to a shared counter slot with one atomic instruction. On BPF that is
/// `lock *(u64 *)(slot) += n` (`BPF_ATOMIC | BPF_ADD`, no fetch: every BPF CPU
/// version has it); `core` offers no atomic add there, hence the assembly.
#[inline(always)]
pub fn bump(slot: &mut u64, n: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `slot` is a valid, aligned `u64`; the instruction adds `n` to it
    // atomically and touches nothing else.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {n}",
            p = in(reg) core::ptr::from_mut(slot),
            n = in(reg) n,
            options(nostack),
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: a `&mut u64` is valid and, by the assertion above, aligned for `AtomicU64`.
    unsafe { AtomicU64::from_ptr(slot) }.fetch_add(n, Ordering::Relaxed);
}

/// Slots of the `COUNTERS` per-CPU array (one `Counters` value per CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    ReadsFast = 0,
    ReadsFallback = 1,
    ReadsSlow = 2,
    Writes = 3,
    FallbackVmaLockFailed = 4,
    FallbackVmaUnsuitable = 5,
    FallbackPageNotPresent = 6,
    FallbackOther = 7,
    ReadBytesFast = 8,
    ReadBytesFallback = 9,
    ReadBytesSlow = 10,
    WrittenBytes = 11,
    FallbackLocklessBytes = 12,
    AcquireFailuresRemote = 13,
    AcquireFailuresHost = 14,
    LockVmaRemote = 15,
    LockVmaOther = 16,
    LockVmaFailuresRemote = 17,
    LockVmaFailuresOther = 18,
    GupCallsFallback = 19,
    GupCallsSlow = 20,
    GupCallsWrite = 21,
    /// Task storage could not be had for a call: the call is not classified.
    StateUnavailable = 22,
    /// An entry found the previous call on its thread still open (its exit was missed).
    MissedExits = 23,
    /// An exit without an entry (the entry was missed).
    MissedEntries = 24,
    MultiVmaReadsFast = 25,
    MultiVmaReadsFallback = 26,
    MultiVmaReadsSlow = 27,
    FollAnonFileBackedLockless = 28,
    DiscardedBytes = 29,
    DiscardedReads = 30,
    FolioWalksPte = 31,
    FolioWalksPmd = 32,
    FolioWalksPud = 33,
    /// Stall events the ring buffer had no room for.
    StallEventsDropped = 34,
    /// Reads whose path no probe saw (`Outcome::unobserved`).
    ReadsUnobserved = 35,
    /// Fallbacks with `Reason::VmaLockFailedOrUnsuitable` (after the four
    /// consecutive ones from `FallbackVmaLockFailed`).
    FallbackVmaLockFailedOrUnsuitable = 36,
    /// Remote accesses whose wait for the target's mmap_lock reached the stall
    /// threshold: `HolderOp::COUNT` slots for the read lock, by the holder's
    /// op, then as many for the write lock (`expand_stack`); see `stall_slot`.
    Stalls = 37,
    /// Fallbacks with `Reason::CrossesVmaEnd` (after the stalls' slots).
    FallbackCrossesVmaEnd = 63,
    /// `folio_walk_start()` returns inside finished calls that counted no
    /// level (`CallState::other_walks`); exported only within the walk
    /// program's hits (`Stats::implied_hits`).
    FolioWalksOther = 64,
}

const _: () = assert!(Counter::FallbackCrossesVmaEnd as usize == Counter::Stalls as usize + 2 * HolderOp::COUNT);

impl Counter {
    pub const COUNT: usize = Counter::FolioWalksOther as usize + 1;

    /// The slot of stalls of lock mode `write` whose holder's op is `op`
    /// (a `HolderOp`; out of range counts as `Unknown`).
    #[inline(always)]
    pub const fn stall_slot(write: bool, op: u32) -> usize {
        let op = if (op as usize) < HolderOp::COUNT { op as usize } else { HolderOp::Unknown as usize };
        Counter::Stalls as usize + (write as usize) * HolderOp::COUNT + op
    }

    /// The fallbacks counter of `reason`.
    pub const fn fallbacks(reason: Reason) -> Counter {
        match reason {
            Reason::VmaLockFailed => Counter::FallbackVmaLockFailed,
            Reason::VmaUnsuitable => Counter::FallbackVmaUnsuitable,
            Reason::PageNotPresent => Counter::FallbackPageNotPresent,
            Reason::Other => Counter::FallbackOther,
            Reason::VmaLockFailedOrUnsuitable => Counter::FallbackVmaLockFailedOrUnsuitable,
            Reason::CrossesVmaEnd => Counter::FallbackCrossesVmaEnd,
        }
    }
    pub const CAPACITY: usize = 128;
}

const _: () = assert!(Counter::COUNT <= Counter::CAPACITY);

/// Slots of the `HISTS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hist {
    ReadDurationFast = 0,
    ReadDurationFallback = 1,
    ReadDurationSlow = 2,
    WriteDuration = 3,
    WaitRemoteRead = 4,
    WaitRemoteWrite = 5,
    WaitHostRead = 6,
    WaitHostWrite = 7,
    Hold = 8,
    ReadVmasFast = 9,
    ReadVmasFallback = 10,
    ReadVmasSlow = 11,
}

impl Hist {
    pub const COUNT: u32 = 12;
    pub const CAPACITY: u32 = 16;
}

pub const BUCKETS: usize = 64;

/// One log2 histogram: `buckets[i]` counts values `v` with `2^(i-1) < v <= 2^i`
/// (bucket 0: `v <= 1`), so a value on a power of two lands in the bucket whose
/// upper bound it equals: "round up at seams". `sum` is the sum of the values.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub sum: u64,
}

/// The bucket of `v`: `ceil(log2(v))`, 0 for `v <= 1`. Loop-free for the
/// verifier; in BPF a binary search of one branch a step, written out in
/// assembly (LLVM gives each step two; a Rust step of one made it read an
/// undefined register), and checked against [`bucket_reference`] in the
/// kernel by the daemon's `bucket_search` test.
#[inline(always)]
pub fn bucket(v: u64) -> usize {
    #[cfg(target_arch = "bpf")]
    {
        if v <= 1 {
            return 0;
        }
        let x = v - 1;
        // (`n` starts at 1: the result is the highest set bit's index + 1.)
        let mut n: u64 = 1;
        // SAFETY: register arithmetic only; each `goto +2` skips the two
        // instructions after it, within the block.
        unsafe {
            core::arch::asm!(
                "{y} = {x}",
                "{y} >>= 32",
                "if {y} == 0 goto +2",
                "{x} = {y}",
                "{n} += 32",
                "{y} = {x}",
                "{y} >>= 16",
                "if {y} == 0 goto +2",
                "{x} = {y}",
                "{n} += 16",
                "{y} = {x}",
                "{y} >>= 8",
                "if {y} == 0 goto +2",
                "{x} = {y}",
                "{n} += 8",
                "{y} = {x}",
                "{y} >>= 4",
                "if {y} == 0 goto +2",
                "{x} = {y}",
                "{n} += 4",
                "{y} = {x}",
                "{y} >>= 2",
                "if {y} == 0 goto +2",
                "{x} = {y}",
                "{n} += 2",
                "{x} >>= 1",
                "{n} += {x}",
                x = inout(reg) x => _,
                n = inout(reg) n,
                y = out(reg) _,
                options(pure, nomem, nostack),
            );
        }
        n as usize
    }
    #[cfg(not(target_arch = "bpf"))]
    bucket_reference(v)
}

/// `i & MASK`, where `i <= MASK` already: a no-op LLVM drops, so in BPF it is
/// assembly, which LLVM keeps. Older verifiers (6.1) need it to see the
/// index's bound and alignment (without it they refuse the programs:
/// "misaligned access").
#[inline(always)]
fn bounded<const MASK: usize>(i: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    {
        let mut i = i;
        // SAFETY: register arithmetic only.
        unsafe { core::arch::asm!("{i} &= {m}", i = inout(reg) i, m = const MASK, options(pure, nomem, nostack)) };
        i
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        i & MASK
    }
}

/// `bucket` as plain Rust: what the BPF assembly must give.
#[inline(always)]
pub fn bucket_reference(v: u64) -> usize {
    if v <= 1 {
        return 0;
    }
    let mut x = v - 1;
    let mut n = 0usize;
    if x >> 32 != 0 {
        x >>= 32;
        n += 32;
    }
    if x >> 16 != 0 {
        x >>= 16;
        n += 16;
    }
    if x >> 8 != 0 {
        x >>= 8;
        n += 8;
    }
    if x >> 4 != 0 {
        x >>= 4;
        n += 4;
    }
    if x >> 2 != 0 {
        x >>= 2;
        n += 2;
    }
    if x >> 1 != 0 {
        n += 1;
    }
    n + 1
}

impl Histogram {
    #[inline(always)]
    pub fn observe(&mut self, v: u64) {
        // Values past 2^63 share the last bucket rather than being dropped.
        let b = bucket(v);
        let b = if b < BUCKETS { b } else { BUCKETS - 1 };
        // SAFETY: masked below BUCKETS (a plain index would keep a bounds
        // check LLVM cannot see past the assembly: a panic call in BPF).
        bump(unsafe { self.buckets.get_unchecked_mut(bounded::<{ BUCKETS - 1 }>(b)) }, 1);
        // Wraps like `wrapping_add`.
        bump(&mut self.sum, v);
    }
}

/// Everything one CPU has counted: the single value of the `STATS` per-CPU array.
/// One map lookup per event reaches all of it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub counters: [u64; Counter::CAPACITY],
    pub hists: [Histogram; Hist::CAPACITY as usize],
}

impl Stats {
    pub const ZERO: Stats = Stats {
        counters: [0; Counter::CAPACITY],
        hists: [Histogram { buckets: [0; BUCKETS], sum: 0 }; Hist::CAPACITY as usize],
    };

    // Indexes are masked to the array sizes (powers of two, larger than any
    // index the enums produce): the eBPF verifiers of older kernels (6.1) do not
    // carry a compare's bound over to the register used for the access.

    #[inline(always)]
    pub fn add(&mut self, c: Counter, n: u64) {
        bump(&mut self.counters[(c as usize) & (Counter::CAPACITY - 1)], n);
    }

    #[inline(always)]
    fn add_at(&mut self, base: Counter, offset: u32, n: u64) {
        bump(&mut self.counters[(base as usize + offset as usize) & (Counter::CAPACITY - 1)], n);
    }

    #[inline(always)]
    pub fn observe(&mut self, h: Hist, v: u64) {
        self.hists[(h as usize) & (Hist::CAPACITY as usize - 1)].observe(v);
    }

    #[inline(always)]
    fn observe_at(&mut self, base: Hist, offset: u32, v: u64) {
        self.hists[(base as usize + offset as usize) & (Hist::CAPACITY as usize - 1)].observe(v);
    }

    /// The runs of `point`'s programs that they leave out of `HITS` because
    /// a call's own counters count them, so that a point's hits are its
    /// `HITS` slot plus these:
    /// - `__access_remote_vm()` exit: one per finished call (a read by its
    ///   path, a write, an unobserved read) and per exit without its entry
    ///   (`MissedEntries`), all counted by that exit's run;
    /// - `folio_walk_start()` return: each one a finished call counted, by
    ///   level or not (`CallState::walk_runs`): a walk enters the hits when
    ///   its call ends, or when the thread's next call finds it open.
    ///
    /// (Entries count themselves: entries minus exits are the calls in
    /// progress or whose end no program saw.) docs/benchmarks.md has what
    /// this saves.
    pub fn implied_hits(&self, point: Point) -> u64 {
        let c = |k: Counter| self.counters[k as usize];
        match point {
            Point::AccessRemoteVmExit => {
                c(Counter::ReadsFast)
                    + c(Counter::ReadsFallback)
                    + c(Counter::ReadsSlow)
                    + c(Counter::Writes)
                    + c(Counter::ReadsUnobserved)
                    + c(Counter::MissedEntries)
            }
            Point::FolioWalkStartExit => {
                c(Counter::FolioWalksPte) + c(Counter::FolioWalksPmd) + c(Counter::FolioWalksPud) + c(Counter::FolioWalksOther)
            }
            _ => 0,
        }
    }

    /// What one finished `__access_remote_vm()` call adds.
    #[inline(always)]
    pub fn record_call(&mut self, o: &Outcome) {
        match o.path {
            None if o.unobserved => self.add(Counter::ReadsUnobserved, 1),
            None => {
                self.add(Counter::Writes, 1);
                self.add(Counter::WrittenBytes, o.bytes);
                self.observe(Hist::WriteDuration, o.duration_ns);
                self.add(Counter::GupCallsWrite, u64::from(o.gup_calls));
            }
            Some(path) => {
                self.record_read(path, o.bytes, o.duration_ns, o.vmas_locked);
                match path {
                    Path::Fallback => self.add(Counter::GupCallsFallback, u64::from(o.gup_calls)),
                    Path::Slow => self.add(Counter::GupCallsSlow, u64::from(o.gup_calls)),
                    Path::Fast => {}
                }
            }
        }
        if let Some(reason) = o.reason {
            self.add(Counter::fallbacks(reason), 1);
            self.add(Counter::FallbackLocklessBytes, o.lockless_bytes);
        }
        if let Some(hold) = o.hold_ns {
            self.observe(Hist::Hold, hold);
        }
        if o.unwaited_acquisition {
            self.record_acquisition(&Acquisition { write: false, wait_ns: 0, failed: false }, false);
        }
        if o.discarded_bytes > 0 {
            self.add(Counter::DiscardedBytes, o.discarded_bytes);
            self.add(Counter::DiscardedReads, 1);
        }
        self.record_walks(o.walks, o.other_walks, o.anon_file_walk);
    }

    /// What a fast read adds ([`CallState::finish_fast`]): the same as
    /// `record_call` of its `Outcome`, with the path known here.
    ///
    /// [`CallState::finish_fast`]: crate::classify::CallState::finish_fast
    #[inline(always)]
    pub fn record_fast_read(&mut self, r: &FastRead) {
        self.record_read(Path::Fast, r.bytes, r.duration_ns, r.vmas_locked);
        self.record_walks(r.walks, r.other_walks, r.anon_file_walk);
    }

    /// A read by its path: count, bytes, duration, VMAs locked.
    #[inline(always)]
    fn record_read(&mut self, path: Path, bytes: u64, duration_ns: u64, vmas_locked: u32) {
        let p = path as u32;
        self.add_at(Counter::ReadsFast, p, 1);
        self.add_at(Counter::ReadBytesFast, p, bytes);
        self.observe_at(Hist::ReadDurationFast, p, duration_ns);
        self.observe_at(Hist::ReadVmasFast, p, u64::from(vmas_locked));
        if vmas_locked >= 2 {
            self.add_at(Counter::MultiVmaReadsFast, p, 1);
        }
    }

    /// A call's lockless walks, by level, its other walk returns, and whether
    /// one was the FOLL_ANON gap.
    #[inline(always)]
    fn record_walks(&mut self, walks: [u32; 3], other_walks: u32, anon_file_walk: bool) {
        // (A compare is cheaper than an atomic add of 0: most reads walk at
        // one level or none.)
        for (c, n) in [
            (Counter::FolioWalksPte, walks[0]),
            (Counter::FolioWalksPmd, walks[1]),
            (Counter::FolioWalksPud, walks[2]),
            (Counter::FolioWalksOther, other_walks),
        ] {
            if n != 0 {
                self.add(c, u64::from(n));
            }
        }
        if anon_file_walk {
            self.add(Counter::FollAnonFileBackedLockless, 1);
        }
    }

    /// One acquisition of an mmap_lock: inside a remote access (`host: false`) or
    /// host-wide contention (`host: true`).
    #[inline(always)]
    pub fn record_acquisition(&mut self, a: &Acquisition, host: bool) {
        let base = if host { Hist::WaitHostRead } else { Hist::WaitRemoteRead };
        self.observe_at(base, u32::from(a.write), a.wait_ns);
        if a.failed {
            self.add(
                if host { Counter::AcquireFailuresHost } else { Counter::AcquireFailuresRemote },
                1,
            );
        }
    }

    /// A remote access's own wait for the target's mmap_lock: the acquisition,
    /// and a stall when the wait reached `stall_threshold_ns` (killed waiters
    /// included: they were stuck all the same).
    #[inline(always)]
    pub fn record_remote_wait(&mut self, a: &Acquisition, stall_threshold_ns: u64, op: u32) {
        self.record_acquisition(a, false);
        if a.wait_ns >= stall_threshold_ns {
            bump(&mut self.counters[Counter::stall_slot(a.write, op) & (Counter::CAPACITY - 1)], 1);
        }
    }

    /// One `lock_vma_under_rcu()` return, inside a remote access or not.
    #[inline(always)]
    pub fn record_lock_vma(&mut self, remote: bool, locked: bool) {
        self.add(if remote { Counter::LockVmaRemote } else { Counter::LockVmaOther }, 1);
        if !locked {
            self.add(
                if remote { Counter::LockVmaFailuresRemote } else { Counter::LockVmaFailuresOther },
                1,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_at_seams() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 2);
        assert_eq!(bucket(5), 3);
        assert_eq!(bucket(1024), 10);
        assert_eq!(bucket(1025), 11);
        assert_eq!(bucket(1 << 40), 40);
        assert_eq!(bucket((1 << 40) + 1), 41);
        assert_eq!(bucket(u64::MAX), 64);
        for i in 1..63 {
            assert_eq!(bucket(1u64 << i), i, "2^{i}");
            assert_eq!(bucket((1u64 << i) + 1), i + 1, "2^{i}+1");
        }
    }

    #[test]
    fn a_wait_at_the_threshold_is_a_stall_and_one_below_is_not() {
        let mut s = Stats::ZERO;
        let wait = |ns, write, failed| Acquisition { write, wait_ns: ns, failed };
        let (munlock, readers) = (HolderOp::Munlock as u32, HolderOp::Readers as u32);
        s.record_remote_wait(&wait(99_999_999, false, false), 100_000_000, munlock);
        let stalls = |s: &Stats| s.counters[Counter::Stalls as usize..Counter::COUNT].iter().sum::<u64>();
        assert_eq!(stalls(&s), 0);
        s.record_remote_wait(&wait(100_000_000, false, false), 100_000_000, munlock);
        s.record_remote_wait(&wait(5_000_000_000, false, true), 100_000_000, readers);
        s.record_remote_wait(&wait(200_000_000, true, false), 100_000_000, munlock);
        // An op out of range (never written by the programs) counts as unknown.
        s.record_remote_wait(&wait(200_000_000, false, false), 100_000_000, 99);
        assert_eq!(stalls(&s), 4);
        assert_eq!(s.counters[Counter::stall_slot(false, munlock)], 1);
        assert_eq!(s.counters[Counter::stall_slot(false, readers)], 1);
        assert_eq!(s.counters[Counter::stall_slot(true, munlock)], 1);
        assert_eq!(s.counters[Counter::stall_slot(false, HolderOp::Unknown as u32)], 1);
        // Every wait is still an acquisition; the killed one a failure.
        assert_eq!(s.hists[Hist::WaitRemoteRead as usize].buckets.iter().sum::<u64>(), 4);
        assert_eq!(s.hists[Hist::WaitRemoteWrite as usize].buckets.iter().sum::<u64>(), 1);
        assert_eq!(s.counters[Counter::AcquireFailuresRemote as usize], 1);
    }

    #[test]
    fn observe_keeps_sum_and_drops_nothing() {
        let mut h = Histogram { buckets: [0; BUCKETS], sum: 0 };
        for v in [0, 1, 2, 3, 4, 1000] {
            h.observe(v);
        }
        assert_eq!(h.sum, 1010);
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[2], 2);
        assert_eq!(h.buckets[10], 1);
        assert_eq!(h.buckets.iter().sum::<u64>(), 6);
        h.observe(u64::MAX);
        assert_eq!(h.buckets[BUCKETS - 1], 1);
    }
}
