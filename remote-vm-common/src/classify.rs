//! The classifier: one state machine per remote access, driven by the probe events
//! of the thread making it, from `__access_remote_vm()` entry to exit.
//!
//! This is the single definition: the eBPF programs call these methods on the
//! per-thread state they keep in task storage, and the unit tests drive the very
//! same methods with event sequences. It is `no_std`, allocation-free, loop-free
//! and panic-free so that it verifies as eBPF.
//!
//! What the patched kernel does for a read (`access_remote_vm_fast()`):
//! per VMA `lock_vma_under_rcu(mm, addr)` (NULL: stop), a VMA-flags check
//! (unsuitable: stop without walking), then `folio_walk_start(.., addr, ..)` per
//! mapping entry (NULL: not present, stop). v1 moves on to the next VMA at a
//! VMA's end; v2 (`series.rs`) locks one VMA per call and stops before any
//! walk when the request runs past its `vm_end`. The rest goes to the old path:
//! `mmap_read_lock_killable()`, GUP, maybe `expand_stack()` which re-takes the lock
//! for write. Writes and unpatched kernels take only the old path.

pub use crate::holder::Activity;

/// The size of a page-table entry by `Level` index, as `1 << shift` (x86-64:
/// 4 KiB, 2 MiB, 1 GiB; an unknown level counts as a PTE).
pub const ENTRY_SHIFT: [u32; 3] = [12, 21, 30];

/// The first address past the entry of `level` that maps `addr`.
#[inline(always)]
pub const fn entry_end(addr: u64, level: u32) -> u64 {
    let shift = match level {
        1 => ENTRY_SHIFT[1],
        2 => ENTRY_SHIFT[2],
        _ => ENTRY_SHIFT[0],
    };
    (addr | ((1u64 << shift) - 1)).wrapping_add(1)
}

/// How a read went.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Returned without taking the target's mmap_lock.
    Fast = 0,
    /// Tried the lockless loop, then took (or tried to take) the mmap_lock.
    Fallback = 1,
    /// Took the mmap_lock with no lockless attempt.
    Slow = 2,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Fast, Path::Fallback, Path::Slow];

    pub const fn label(self) -> &'static str {
        match self {
            Path::Fast => "fast",
            Path::Fallback => "fallback",
            Path::Slow => "slow",
        }
    }
}

/// Why the lockless loop of a fallback stopped.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `lock_vma_under_rcu()` returned NULL (no VMA, or a writer holds it).
    VmaLockFailed = 0,
    /// A VMA was locked but no walk followed: hugetlb, VM_IO/VM_PFNMAP,
    /// secretmem or unreadable.
    VmaUnsuitable = 1,
    /// `folio_walk_start()` returned NULL: nothing present (never touched, swapped
    /// out, the shared zero page, …).
    PageNotPresent = 2,
    /// Anything else (e.g. a walk that found no page).
    Other = 3,
    /// One of the first two (or `CrossesVmaEnd`), where `lock_vma_under_rcu()`
    /// is not probed (the default: it runs on every page fault): the loop
    /// stopped at a VMA, not at a walk.
    VmaLockFailedOrUnsuitable = 4,
    /// A VMA was locked, the request runs past its `vm_end` and no walk
    /// followed: v2's bail for a request that does not lie inside one VMA. It
    /// takes precedence over `VmaUnsuitable` (v2 checks the length first); on
    /// v1, which walks across VMAs, it appears only when the crossing VMA was
    /// also unsuitable.
    CrossesVmaEnd = 5,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::VmaLockFailed,
        Reason::VmaUnsuitable,
        Reason::PageNotPresent,
        Reason::Other,
        Reason::VmaLockFailedOrUnsuitable,
        Reason::CrossesVmaEnd,
    ];

    /// Whether the reason is reported where `lock_vma_under_rcu()` is probed
    /// (`vma_probed`) or where it is not: the VMA-level reasons are split in
    /// the one and merged in the other.
    pub const fn reported(self, vma_probed: bool) -> bool {
        match self {
            Reason::VmaLockFailed | Reason::VmaUnsuitable | Reason::CrossesVmaEnd => vma_probed,
            Reason::VmaLockFailedOrUnsuitable => !vma_probed,
            Reason::PageNotPresent | Reason::Other => true,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Reason::VmaLockFailed => "vma_lock_failed",
            Reason::VmaUnsuitable => "vma_unsuitable",
            Reason::PageNotPresent => "page_not_present",
            Reason::Other => "other",
            Reason::VmaLockFailedOrUnsuitable => "vma_lock_failed_or_unsuitable",
            Reason::CrossesVmaEnd => "crosses_vma_end",
        }
    }

    pub const fn from_u32(v: u32) -> Reason {
        match v {
            0 => Reason::VmaLockFailed,
            1 => Reason::VmaUnsuitable,
            2 => Reason::PageNotPresent,
            4 => Reason::VmaLockFailedOrUnsuitable,
            5 => Reason::CrossesVmaEnd,
            _ => Reason::Other,
        }
    }
}

/// How the programs learn that a read ran the lockless loop (`Control::read_path`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// From `lock_vma_under_rcu()` returns (probed), or not at all (the kernel
    /// has no lockless path): every step is seen.
    Probed = 0,
    /// `lock_vma_under_rcu()` is not probed and the start-up probe read showed
    /// the kernel runs the lockless loop for every read: a read runs it, and a
    /// stop without a failing walk was at a VMA.
    Implied = 1,
    /// `lock_vma_under_rcu()` is not probed and the start-up probe read has not
    /// decided yet (or could not): a walk is evidence of the loop, a locked read
    /// without one cannot be told from a slow one and is `unobserved`.
    Pending = 2,
    /// The kernel has no lockless path (the start-up probe read took the lock,
    /// or its functions are missing): every call takes the mmap_lock first.
    NoLockless = 3,
}

impl ReadPath {
    pub const fn from_u32(v: u32) -> ReadPath {
        match v {
            1 => ReadPath::Implied,
            2 => ReadPath::Pending,
            3 => ReadPath::NoLockless,
            _ => ReadPath::Probed,
        }
    }
}

/// The level of a successful `folio_walk_start()` (`enum folio_walk_level`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Pte = 0,
    Pmd = 1,
    Pud = 2,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Pte, Level::Pmd, Level::Pud];

    pub const fn label(self) -> &'static str {
        match self {
            Level::Pte => "pte",
            Level::Pmd => "pmd",
            Level::Pud => "pud",
        }
    }
}

// `CallState::flags`.
/// Inside `__access_remote_vm()` now.
pub const F_ACTIVE: u32 = 1 << 0;
/// `FOLL_WRITE` was set.
pub const F_WRITE: u32 = 1 << 1;
/// `FOLL_ANON` was set (cmdline/environ readers).
pub const F_ANON: u32 = 1 << 2;
/// At least one `lock_vma_under_rcu()` ran inside this call.
pub const F_LOCKLESS: u32 = 1 << 3;
/// The last lockless step was a successful `lock_vma_under_rcu()` with no walk yet.
pub const F_VMA_PENDING: u32 = 1 << 4;
/// A lockless step failed; the loop is over.
pub const F_STOPPED: u32 = 1 << 5;
/// The target's mmap_lock was asked for (read or write) at least once.
pub const F_LOCK_TRIED: u32 = 1 << 6;
/// The daemon's own start-up probe read: kept out of every counter.
pub const F_SELFTEST: u32 = 1 << 7;
/// A lockless walk succeeded in a VMA that is not anonymous while `FOLL_ANON`
/// was set (the v1 FOLL_ANON gap).
pub const F_ANON_FILE_WALK: u32 = 1 << 8;
/// A lock wait is in progress.
pub const F_WAITING: u32 = 1 << 9;
/// The wait in progress is for the write lock.
pub const F_WAIT_WRITE: u32 = 1 << 10;
/// The loop's VMA steps are not probed (`ReadPath::Implied` or a walk seen
/// under `ReadPath::Pending`): a stop without a failing walk was at a VMA.
pub const F_VMA_UNSEEN: u32 = 1 << 11;
/// Begun under `ReadPath::Pending`.
pub const F_PATH_PENDING: u32 = 1 << 12;
/// The VMA of the last `lock_vma_under_rcu()` ends before the request does.
pub const F_CROSSES: u32 = 1 << 13;
/// Remote waits come from the lock's contention events
/// (`Control::remote_waits_from_contention`):
/// an acquisition no wait was seen for is counted at the exit as one that
/// did not wait.
pub const F_WAITS_CONTENTION: u32 = 1 << 14;
/// The call takes the mmap_lock before anything else (a write; a read on a
/// kernel without the lockless path): acquired at its start unless it waited.
pub const F_LOCK_AT_START: u32 = 1 << 15;
/// A wait for the target's lock ended in this call (an acquisition counted).
pub const F_WAIT_SEEN: u32 = 1 << 16;

/// Per-thread state of one remote access, kept in task storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallState {
    pub flags: u32,
    /// `Reason` of the step that stopped the lockless loop (valid with F_STOPPED).
    pub reason: u32,
    /// The target `mm_struct *`.
    pub mm: u64,
    pub start_addr: u64,
    pub len: u64,
    pub start_ns: u64,
    /// Address argument of the most recent lockless step.
    pub last_step_addr: u64,
    /// When the wait in progress began.
    pub wait_start_ns: u64,
    /// When the mmap_lock was first acquired in this call (0: never).
    pub acquired_ns: u64,
    /// VMAs locked by `lock_vma_under_rcu()` in this call.
    pub vmas_locked: u32,
    /// Successful lockless walks, by level.
    pub walks: [u32; 3],
    /// The other `folio_walk_start()` returns seen in this call: no folio or
    /// no page, a level not known, or outside the lockless loop. With
    /// `walks`, every walk program run on an active call is counted by the
    /// call itself ([`Stats::implied_hits`](crate::stats::Stats::implied_hits)).
    pub other_walks: u32,
    /// Lockless bytes decided when the lock was first tried (fallbacks).
    pub lockless_bytes: u64,
    /// `Path` decided when the lock was first tried.
    pub locked_path: u32,
    /// GUP calls (`get_user_pages_remote`) in this call.
    pub gup_calls: u32,
    /// kprobe mode only: arguments stashed at function entry for the return probe.
    pub pending_addr: u64,
    pub pending_ptr: u64,
    pub pending_vma: u64,
    /// Who held the target's mmap_lock when the wait in progress began.
    pub holder: HolderSnap,
    /// The reader's cgroup id, taken when a wait begins on a taken lock (0:
    /// not taken then); the task iterator reports it for waits in progress.
    pub cgroup_id: u64,
}

/// The target's mmap_lock holder, copied when a wait begins (a task pointer
/// read later may be freed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HolderSnap {
    /// `HolderKind`.
    pub kind: u32,
    /// 1: the identity is the holder's for sure (a writer); 0: a hint (the last
    /// reader the kernel recorded) or none.
    pub exact: u32,
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
    /// 1: the first task queued on the lock waits to write — readers that
    /// arrive queue behind it even while the lock is reader-owned (best
    /// effort: read without the lock's `wait_lock`).
    pub writer_waiting: u32,
    /// `HolderOp`: what the stall is counted under.
    pub op: u32,
    /// What the holder (a writer) was doing when observed.
    pub activity: Activity,
    /// When the holder was observed (`bpf_ktime_get_ns()`): as the wait
    /// began, then again at each run of the task iterator while it lasted
    /// (the lock's owner re-read each time). 0: never.
    pub observed_ns: u64,
    /// The writer first in the lock's queue (`writer_waiting`), its identity
    /// and activity (0s when none or unknown).
    pub queued_tgid: u32,
    pub queued_tid: u32,
    pub queued_comm: [u8; 16],
    pub queued: Activity,
}

/// What the lock word says about who holds an `rw_semaphore`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderKind {
    /// Free when looked at (or not looked at).
    None = 0,
    Writer = 1,
    /// Reader-owned; the identity, if any, is the last reader's.
    Readers = 2,
    /// The layout is not known (no BTF offsets, PREEMPT_RT's rwbase).
    Unknown = 3,
}

impl HolderKind {
    pub const ALL: [HolderKind; 4] = [HolderKind::None, HolderKind::Writer, HolderKind::Readers, HolderKind::Unknown];

    pub const fn label(self) -> &'static str {
        match self {
            HolderKind::None => "none",
            HolderKind::Writer => "writer",
            HolderKind::Readers => "readers",
            HolderKind::Unknown => "unknown",
        }
    }

    pub fn from_u32(v: u32) -> HolderKind {
        HolderKind::ALL.into_iter().find(|k| *k as u32 == v).unwrap_or(HolderKind::Unknown)
    }
}

// `struct rw_semaphore` (kernel/locking/rwsem.c; the same in 6.1, 6.12 and 7.3,
// none of them in BTF).
/// `owner`: the lock is reader-owned (the task is the last reader's).
pub const RWSEM_READER_OWNED: u64 = 1 << 0;
/// `owner`: optimistic spinning is off.
pub const RWSEM_NONSPINNABLE: u64 = 1 << 1;
pub const RWSEM_OWNER_FLAGS_MASK: u64 = RWSEM_READER_OWNED | RWSEM_NONSPINNABLE;
/// `count`: a writer holds it.
pub const RWSEM_WRITER_LOCKED: u64 = 1 << 0;
/// `count`: readers in bits 8..=62.
pub const RWSEM_READER_SHIFT: u32 = 8;
pub const RWSEM_READER_MASK: u64 = ((1u64 << 55) - 1) << RWSEM_READER_SHIFT;

/// `count`: tasks wait in the lock's queue (set with the first waiter,
/// cleared with the last).
pub const RWSEM_FLAG_WAITERS: u64 = 1 << 1;

/// `task_struct.__state`'s `TASK_UNINTERRUPTIBLE` (include/linux/sched.h, a
/// `#define` BTF does not carry: 0x2 in 6.1, 6.12 and 7.3, as in every kernel
/// since 2.6). A waiter in `down_read_killable()`/`down_write_killable()`
/// sleeps `TASK_KILLABLE` (`TASK_WAKEKILL` 0x100 | this).
pub const TASK_UNINTERRUPTIBLE: u32 = 0x2;

/// Whether a wait the per-thread state calls in progress is one: its thread
/// sleeps uninterruptibly and the lock still has waiters. A wait whose end
/// was never seen (a kretprobe past `maxactive`, an fexit skipped for
/// recursion under preemption) fails one of them once the thread has the
/// lock. `None`: that word is unknown here (no BTF offset, PREEMPT_RT's
/// rwsem), which does not rule the wait out.
#[inline(always)]
pub const fn wait_is_real(task_state: Option<u32>, lock_count: Option<u64>) -> bool {
    let sleeping = match task_state {
        Some(s) => s & TASK_UNINTERRUPTIBLE != 0,
        None => true,
    };
    let queued = match lock_count {
        Some(c) => c & RWSEM_FLAG_WAITERS != 0,
        None => true,
    };
    sleeping && queued
}

/// Whether an `rw_semaphore` is held (by a writer or readers), by its `count`.
#[inline(always)]
pub const fn lock_taken(count: u64) -> bool {
    count & (RWSEM_WRITER_LOCKED | RWSEM_READER_MASK) != 0
}

/// Who holds an `rw_semaphore` by its `count` and `owner` words: the kind,
/// whether the identity is exact, and the `task_struct *` to read it from (0:
/// none).
#[inline(always)]
pub fn decode_holder(count: u64, owner: u64) -> (HolderKind, bool, u64) {
    let task = owner & !RWSEM_OWNER_FLAGS_MASK;
    if count & RWSEM_WRITER_LOCKED != 0 {
        // The owner is set just after the count: 0 in that window.
        let exact = task != 0 && owner & RWSEM_READER_OWNED == 0;
        (HolderKind::Writer, exact, if exact { task } else { 0 })
    } else if count & RWSEM_READER_MASK != 0 {
        let last_reader = if owner & RWSEM_READER_OWNED != 0 { task } else { 0 };
        (HolderKind::Readers, false, last_reader)
    } else {
        (HolderKind::None, false, 0)
    }
}

/// One mmap_lock acquisition of the target's lock (one observation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquisition {
    pub write: bool,
    pub wait_ns: u64,
    /// `down_*_killable()` failed (the reader was killed).
    pub failed: bool,
}

/// Everything one finished call contributes to the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `None` for writes, and for reads whose path no probe saw (`unobserved`).
    pub path: Option<Path>,
    /// A read that neither took the target's mmap_lock nor ran
    /// `lock_vma_under_rcu()` as far as the probes saw: a program the kernel
    /// skipped (a preempted trampoline, a kretprobe out of instances), not a
    /// fast read. Counted apart, never as `fast`.
    pub unobserved: bool,
    pub reason: Option<Reason>,
    /// Bytes the call returned (negative returns count 0).
    pub bytes: u64,
    pub duration_ns: u64,
    /// First acquisition of the mmap_lock to exit, if it was acquired.
    pub hold_ns: Option<u64>,
    /// Fallbacks: bytes the lockless loop had done when it stopped.
    pub lockless_bytes: u64,
    /// Fallbacks that returned fewer bytes than the lockless loop had already
    /// copied (v1 keeps `return 0` when the old path's vma_lookup/expand_stack
    /// fails): the bytes thrown away.
    pub discarded_bytes: u64,
    pub vmas_locked: u32,
    pub walks: [u32; 3],
    /// `CallState::other_walks`.
    pub other_walks: u32,
    /// A lockless walk succeeded in a non-anonymous VMA with FOLL_ANON set.
    pub anon_file_walk: bool,
    pub gup_calls: u32,
    /// Waits from contention events: the call took the target's mmap_lock
    /// for reading without waiting (no contention), counted as a wait of 0.
    pub unwaited_acquisition: bool,
}

/// What a fast read contributes (`CallState::finish_fast`): an `Outcome`
/// with `path: Some(Path::Fast)` has nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastRead {
    pub bytes: u64,
    pub duration_ns: u64,
    pub vmas_locked: u32,
    pub walks: [u32; 3],
    pub other_walks: u32,
    pub anon_file_walk: bool,
}

/// Values that come from the running kernel's BTF.
#[derive(Clone, Copy, Debug)]
pub struct Flags {
    pub foll_write: u32,
    pub foll_anon: u32,
}

impl CallState {
    pub const fn is_active(&self) -> bool {
        self.flags & F_ACTIVE != 0
    }

    /// Counted in the metrics (active and not the daemon's own probe read).
    pub const fn is_counted(&self) -> bool {
        self.flags & (F_ACTIVE | F_SELFTEST) == F_ACTIVE
    }

    /// All zero up to `holder`, as `CallState::default()`, one 8-byte store
    /// per word. A plain assignment of the default compiles to a `memset`
    /// call, which a BPF object links as a byte-at-a-time loop: 840 BPF
    /// instructions for 168 bytes, on every remote access (about 1000 guest
    /// instructions, docs/benchmarks.md). Volatile stores are neither merged
    /// back into that call nor dropped. `holder` and `cgroup_id` (at the end,
    /// 144 bytes) are left as they are: every wait on the target's lock writes
    /// them before it is marked waiting (`note_holder`), and nothing reads
    /// them otherwise — clearing them would cost every remote access 18 stores.
    #[inline(always)]
    pub fn clear(&mut self) {
        const WORDS: usize = core::mem::offset_of!(CallState, holder) / 8;
        const _: () = assert!(core::mem::offset_of!(CallState, holder) % 8 == 0);
        const _: () = assert!(core::mem::offset_of!(CallState, cgroup_id) > core::mem::offset_of!(CallState, holder));
        const _: () = assert!(
            core::mem::size_of::<CallState>() % 8 == 0 && core::mem::align_of::<CallState>() == 8
        );
        let words = core::ptr::from_mut(self).cast::<u64>();
        let mut i = 0;
        while i < WORDS {
            // SAFETY: `i` words into `self`, which is WORDS aligned words of
            // integers only, for which zero is the default.
            unsafe { words.add(i).write_volatile(0) };
            i += 1;
        }
    }

    /// `__access_remote_vm(mm, addr, buf, len, gup_flags)` entered. Returns
    /// the walk runs (`walk_runs`) of the previous call on this thread if it
    /// never saw its exit (a missed return probe), `None` otherwise.
    #[inline(always)]
    pub fn begin(
        &mut self,
        mm: u64,
        addr: u64,
        len: i32,
        gup_flags: u32,
        f: Flags,
        selftest: bool,
        reads: ReadPath,
        waits_from_contention: bool,
        now: u64,
    ) -> Option<u32> {
        let orphan = if self.is_active() { Some(self.walk_runs()) } else { None };
        self.clear();
        let mut flags = F_ACTIVE;
        if waits_from_contention {
            flags |= F_WAITS_CONTENTION;
        }
        if gup_flags & f.foll_write != 0 {
            flags |= F_WRITE;
        }
        if gup_flags & f.foll_anon != 0 {
            flags |= F_ANON;
        }
        if selftest {
            flags |= F_SELFTEST;
        }
        match reads {
            // Every read with something to copy enters the loop (a write never).
            ReadPath::Implied if flags & F_WRITE == 0 && len > 0 => flags |= F_LOCKLESS | F_VMA_UNSEEN,
            ReadPath::Pending => flags |= F_PATH_PENDING,
            _ => {}
        }
        if flags & F_WRITE != 0 || reads == ReadPath::NoLockless {
            // Takes the lock first: slow, whatever a lock probe sees or misses.
            flags |= F_LOCK_TRIED | F_LOCK_AT_START;
            self.locked_path = Path::Slow as u32;
        }
        self.flags = flags;
        self.mm = mm;
        self.start_addr = addr;
        self.last_step_addr = addr;
        self.len = if len > 0 { len as u64 } else { 0 };
        self.start_ns = now;
        orphan
    }

    #[inline(always)]
    fn in_lockless_phase(&self) -> bool {
        self.flags & (F_ACTIVE | F_WRITE | F_LOCK_TRIED | F_STOPPED) == F_ACTIVE
    }

    /// `lock_vma_under_rcu(mm, addr)` returned (`locked`: non-NULL), the VMA
    /// ending at `vm_end` (0: not known).
    #[inline(always)]
    pub fn lock_vma(&mut self, mm: u64, addr: u64, locked: bool, vm_end: u64) {
        if !self.in_lockless_phase() || mm != self.mm {
            return;
        }
        if self.flags & F_LOCKLESS == 0 {
            // The loop's first step is at the untagged start address: the
            // request's bytes are counted from there.
            self.start_addr = addr;
        }
        self.flags |= F_LOCKLESS;
        self.last_step_addr = addr;
        if locked {
            self.vmas_locked += 1;
            let crosses = vm_end != 0 && self.start_addr.wrapping_add(self.len) > vm_end;
            self.flags = (self.flags & !F_CROSSES) | F_VMA_PENDING | if crosses { F_CROSSES } else { 0 };
        } else {
            self.stop(Reason::VmaLockFailed);
        }
    }

    /// `folio_walk_start(fw, vma, addr, flags)` returned. `found`: a folio with a
    /// page; `level`: `fw->level`; `anonymous`: the VMA is anonymous. Every
    /// return inside a call is counted once, in `walks` or `other_walks`.
    #[inline(always)]
    pub fn folio_walk(&mut self, addr: u64, found: bool, level: u32, anonymous: bool) {
        if !self.is_active() {
            return;
        }
        if !self.in_lockless_phase() {
            self.other_walks += 1;
            return;
        }
        if self.flags & F_LOCKLESS == 0 {
            // Not probed at its VMA step, a walk before any lock is the loop's.
            if self.flags & F_PATH_PENDING == 0 {
                self.other_walks += 1;
                return;
            }
            self.flags |= F_LOCKLESS | F_VMA_UNSEEN;
        }
        self.flags &= !F_VMA_PENDING;
        self.last_step_addr = addr;
        if !found {
            self.other_walks += 1;
            self.stop(Reason::PageNotPresent);
            return;
        }
        match level {
            0 => self.walks[0] += 1,
            1 => self.walks[1] += 1,
            2 => self.walks[2] += 1,
            _ => self.other_walks += 1,
        }
        if self.flags & F_VMA_UNSEEN != 0 {
            // The next step is the next VMA's only when this walk copied its
            // whole entry: where the loop stops at a VMA, it stopped at the end
            // of the last entry it walked (the probed VMA step's address).
            self.last_step_addr = entry_end(addr, level);
        }
        if self.flags & F_ANON != 0 && !anonymous {
            self.flags |= F_ANON_FILE_WALK;
        }
    }

    /// A walk returned a folio but no page: the loop stops there. Counted
    /// in `other_walks`, as `folio_walk`.
    #[inline(always)]
    pub fn walk_without_page(&mut self, addr: u64) {
        if !self.is_active() {
            return;
        }
        self.other_walks += 1;
        if self.in_lockless_phase() {
            self.last_step_addr = addr;
            self.stop(Reason::Other);
        }
    }

    /// The walk program's runs this call has counted (`walks`, `other_walks`).
    #[inline(always)]
    pub fn walk_runs(&self) -> u32 {
        self.walks[0] + self.walks[1] + self.walks[2] + self.other_walks
    }

    #[inline(always)]
    fn stop(&mut self, reason: Reason) {
        self.flags = (self.flags | F_STOPPED) & !F_VMA_PENDING;
        self.reason = reason as u32;
    }

    /// `get_user_pages_remote()` entered: it runs under the target's
    /// mmap_lock, so the lock was taken. `now` is read only when that is
    /// when it was acquired (no wait was seen and the call did not take the
    /// lock at its start: the lockless loop's fallback).
    #[inline(always)]
    pub fn gup(&mut self, now: impl FnOnce() -> u64) {
        if self.is_active() {
            self.gup_calls += 1;
            self.lock_held(now);
        }
    }

    /// `expand_stack(mm, addr)` entered: the slow path holds the target's
    /// mmap_lock and found no VMA at the address (Linux 6.5+ looks before its
    /// loop, so a read into a hole takes the lock and makes no GUP call). `now`
    /// as for `gup`.
    #[inline(always)]
    pub fn expand_stack(&mut self, now: impl FnOnce() -> u64) {
        if self.is_active() {
            self.lock_held(now);
        }
    }

    /// The target's mmap_lock is held: it was tried, and with waits from
    /// contention events it was acquired now if nothing said when.
    #[inline(always)]
    fn lock_held(&mut self, now: impl FnOnce() -> u64) {
        self.lock_tried();
        if self.flags & (F_WAITS_CONTENTION | F_LOCK_AT_START) == F_WAITS_CONTENTION && self.acquired_ns == 0 {
            self.acquired_ns = now();
        }
    }

    /// The call asks for the target's mmap_lock for the first time: the
    /// lockless loop (if it ran) is over, and what it did is the fallback's.
    #[inline(always)]
    fn lock_tried(&mut self) {
        if self.flags & F_LOCK_TRIED != 0 {
            return;
        }
        self.flags |= F_LOCK_TRIED;
        self.locked_path = if self.flags & F_LOCKLESS != 0 {
            Path::Fallback as u32
        } else {
            Path::Slow as u32
        };
        if self.flags & F_LOCKLESS != 0 {
            if self.flags & F_STOPPED == 0 {
                // Locked a VMA and walked nothing after it: the flags check
                // refused the VMA. Anything else that ends the loop without a
                // failing step is `other`.
                self.reason = if self.flags & F_VMA_UNSEEN != 0 {
                    Reason::VmaLockFailedOrUnsuitable as u32
                } else if self.flags & F_VMA_PENDING != 0 && self.flags & F_CROSSES != 0 {
                    Reason::CrossesVmaEnd as u32
                } else if self.flags & F_VMA_PENDING != 0 {
                    Reason::VmaUnsuitable as u32
                } else {
                    Reason::Other as u32
                };
            }
            self.lockless_bytes = self.last_step_addr.wrapping_sub(self.start_addr);
            if self.lockless_bytes > self.len {
                self.lockless_bytes = self.len;
            }
        }
    }

    /// A wait for the target's mmap_lock begins (`down_{read,write}_killable(sem)`
    /// entered, or the lock's contention began); `target`: `sem` is the target
    /// mm's mmap_lock.
    #[inline(always)]
    pub fn lock_wait_begin(&mut self, target: bool, write: bool, now: u64) {
        if !self.is_active() || !target {
            return;
        }
        self.lock_tried();
        // The start first: a task iterator on another CPU that sees
        // F_WAITING must see this wait's start, not the previous one's.
        self.wait_start_ns = now;
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        let kind = if write { F_WAIT_WRITE } else { 0 };
        self.flags = (self.flags & !F_WAIT_WRITE) | kind | F_WAITING;
    }

    /// A counted wait for the target's mmap_lock is in progress: what the task
    /// iterator reports at a scrape (`now`), as (age, write lock).
    #[inline(always)]
    pub fn wait_in_progress(&self, now: u64) -> Option<(u64, bool)> {
        let flags = self.flags;
        if flags & (F_ACTIVE | F_WAITING | F_SELFTEST) != (F_ACTIVE | F_WAITING) {
            return None;
        }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        Some((now.saturating_sub(self.wait_start_ns), flags & F_WAIT_WRITE != 0))
    }

    /// The `down_*_killable()` in progress returned (`ok`: acquired).
    #[inline(always)]
    pub fn lock_wait_end(&mut self, ok: bool, now: u64) -> Option<Acquisition> {
        if self.flags & (F_ACTIVE | F_WAITING) != (F_ACTIVE | F_WAITING) {
            return None;
        }
        self.flags = (self.flags & !F_WAITING) | F_WAIT_SEEN;
        if ok && self.acquired_ns == 0 {
            self.acquired_ns = now;
        }
        Some(Acquisition {
            write: self.flags & F_WAIT_WRITE != 0,
            wait_ns: now.saturating_sub(self.wait_start_ns),
            failed: !ok,
        })
    }

    /// [`CallState::finish`] of a fast read — the lockless loop ran (or there
    /// was nothing to copy), no write, the target's mmap_lock never asked
    /// for nor held — in the few instructions such a read needs (the exit
    /// program's common case); `None`, and the state unchanged, for any other
    /// call. `finish` gives the same through it.
    #[inline(always)]
    pub fn finish_fast(&mut self, ret: i64, now: u64) -> Option<FastRead> {
        let flags = self.flags;
        if flags & (F_ACTIVE | F_WRITE | F_LOCK_TRIED) != F_ACTIVE
            || (flags & F_LOCKLESS == 0 && self.len > 0)
            || self.acquired_ns != 0
        {
            return None;
        }
        self.flags = flags & !F_ACTIVE;
        Some(FastRead {
            bytes: if ret > 0 { ret as u64 } else { 0 },
            duration_ns: now.saturating_sub(self.start_ns),
            vmas_locked: self.vmas_locked,
            walks: self.walks,
            other_walks: self.other_walks,
            anon_file_walk: flags & F_ANON_FILE_WALK != 0,
        })
    }

    /// `__access_remote_vm()` returned `ret`. Returns `None` if no entry was seen
    /// (a missed entry probe).
    #[inline(always)]
    pub fn finish(&mut self, ret: i64, now: u64) -> Option<Outcome> {
        if let Some(f) = self.finish_fast(ret, now) {
            return Some(Outcome {
                path: Some(Path::Fast),
                unobserved: false,
                reason: None,
                bytes: f.bytes,
                duration_ns: f.duration_ns,
                hold_ns: None,
                lockless_bytes: 0,
                discarded_bytes: 0,
                vmas_locked: f.vmas_locked,
                walks: f.walks,
                other_walks: f.other_walks,
                anon_file_walk: f.anon_file_walk,
                gup_calls: self.gup_calls,
                unwaited_acquisition: false,
            });
        }
        if !self.is_active() {
            return None;
        }
        let flags = self.flags;
        self.flags &= !F_ACTIVE;
        let bytes = if ret > 0 { ret as u64 } else { 0 };
        // Fast takes evidence: the lockless loop ran (a zero-length read has
        // nothing to loop over). No lock and no lockless step is a probe that
        // did not run.
        let unobserved = self.len > 0
            && flags & (F_WRITE | F_LOCKLESS) == 0
            // A locked read without evidence of the loop is slow, unless the
            // loop's first step is not probed and its verdict still pending.
            && (flags & F_LOCK_TRIED == 0 || flags & F_PATH_PENDING != 0);
        let path = if flags & F_WRITE != 0 || unobserved {
            None
        } else if flags & F_LOCK_TRIED == 0 {
            Some(Path::Fast)
        } else if self.locked_path == Path::Fallback as u32 {
            Some(Path::Fallback)
        } else {
            Some(Path::Slow)
        };
        let fallback = path == Some(Path::Fallback);
        let reason = if fallback {
            Some(Reason::from_u32(self.reason))
        } else {
            None
        };
        let lockless_bytes = if fallback { self.lockless_bytes } else { 0 };
        // Waits from contention events: the lock was taken (asked for, or a
        // GUP ran under it) and no wait ended — an acquisition that did not
        // wait; taken at the call's start where it comes first.
        let contention = flags & F_WAITS_CONTENTION != 0;
        // (A wait that began and whose end no program saw is not one: its
        // acquisition is unknown, as with the lock probes.)
        let unwaited_acquisition = contention && flags & (F_LOCK_TRIED | F_WAIT_SEEN | F_WAITING) == F_LOCK_TRIED;
        if contention && flags & F_LOCK_AT_START != 0 && self.acquired_ns == 0 {
            self.acquired_ns = self.start_ns;
        }
        Some(Outcome {
            path,
            unobserved,
            reason,
            bytes,
            duration_ns: now.saturating_sub(self.start_ns),
            hold_ns: if self.acquired_ns != 0 {
                Some(now.saturating_sub(self.acquired_ns))
            } else {
                None
            },
            lockless_bytes,
            discarded_bytes: lockless_bytes.saturating_sub(bytes),
            vmas_locked: self.vmas_locked,
            walks: self.walks,
            other_walks: self.other_walks,
            anon_file_walk: flags & F_ANON_FILE_WALK != 0,
            gup_calls: self.gup_calls,
            unwaited_acquisition,
        })
    }
}

#[cfg(test)]
mod holder_tests {
    use super::*;

    #[test]
    fn the_lock_word_says_who_holds_it() {
        let task = 0xffff_8880_1234_5600u64;
        // A writer: count bit 0, the owner is the task.
        assert_eq!(decode_holder(0x3, task), (HolderKind::Writer, true, task));
        // ... before it set the owner: a writer, identity unknown.
        assert_eq!(decode_holder(0x1, 0), (HolderKind::Writer, false, 0));
        // One reader plus waiters; the owner word names the last reader (with
        // NONSPINNABLE set, as seen on a real kernel).
        assert_eq!(
            decode_holder(0x102, task | RWSEM_READER_OWNED | RWSEM_NONSPINNABLE),
            (HolderKind::Readers, false, task)
        );
        // Readers whose owner word is stale (no READER_OWNED bit): no identity.
        assert_eq!(decode_holder(0x200, task), (HolderKind::Readers, false, 0));
        assert_eq!(decode_holder(0, 0), (HolderKind::None, false, 0));
        // Taken exactly when decode_holder names a writer or readers.
        for count in [0, 1, 2, 4, 0x100, 0x102, 1 << 62, 1 << 63, (1 << 63) | 2] {
            assert_eq!(lock_taken(count), decode_holder(count, task).0 != HolderKind::None, "{count:#x}");
        }
        // READFAIL (bit 63) is not a reader.
        assert_eq!(decode_holder(1 << 63, 0).0, HolderKind::None);
        for k in HolderKind::ALL {
            assert_eq!(HolderKind::from_u32(k as u32), k);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::stats::{Counter, Hist, Stats};

    const F: Flags = Flags {
        foll_write: 0x1,
        foll_anon: 0x80,
    };
    const MM: u64 = 0xffff_8880_0000_1000;

    /// One probe event, as the eBPF programs see it.
    #[derive(Clone, Copy, Debug)]
    enum Ev {
        Begin { addr: u64, len: i32, gup: u32 },
        LockVma { addr: u64, ok: bool },
        /// A VMA locked, ending at `end`.
        LockVmaEnd { addr: u64, end: u64 },
        LockVmaOtherMm { addr: u64 },
        Walk { addr: u64, found: bool, level: u32, anon: bool },
        WalkNoPage { addr: u64 },
        Gup,
        ExpandStack,
        Wait { write: bool },
        WaitOtherSem,
        Got { ok: bool },
        Finish { ret: i64 },
    }
    use Ev::*;

    struct Run {
        orphans: u32,
        acquisitions: Vec<Acquisition>,
        outcome: Option<Outcome>,
    }

    /// Drives `events` through one `CallState`, 10 ns apart.
    fn drive(events: &[Ev]) -> Run {
        drive_with(ReadPath::Probed, events)
    }

    fn drive_with(reads: ReadPath, events: &[Ev]) -> Run {
        drive_in(reads, false, events)
    }

    /// `contention`: remote waits from the lock's contention events.
    fn drive_in(reads: ReadPath, contention: bool, events: &[Ev]) -> Run {
        let mut s = CallState::default();
        let mut run = Run {
            orphans: 0,
            acquisitions: Vec::new(),
            outcome: None,
        };
        for (i, ev) in events.iter().enumerate() {
            step(&mut s, &mut run, reads, contention, *ev, 1000 + 10 * i as u64);
        }
        run
    }

    fn step(s: &mut CallState, run: &mut Run, reads: ReadPath, contention: bool, ev: Ev, now: u64) {
        match ev {
            Begin { addr, len, gup } => run.orphans += u32::from(s.begin(MM, addr, len, gup, F, false, reads, contention, now).is_some()),
            LockVma { addr, ok } => s.lock_vma(MM, addr, ok, 0),
            LockVmaEnd { addr, end } => s.lock_vma(MM, addr, true, end),
            LockVmaOtherMm { addr } => s.lock_vma(MM + 4096, addr, true, 0),
            Walk { addr, found, level, anon } => s.folio_walk(addr, found, level, anon),
            WalkNoPage { addr } => s.walk_without_page(addr),
            Gup => s.gup(|| now),
            ExpandStack => s.expand_stack(|| now),
            Wait { write } => s.lock_wait_begin(true, write, now),
            WaitOtherSem => s.lock_wait_begin(false, false, now),
            Got { ok } => run.acquisitions.extend(s.lock_wait_end(ok, now)),
            Finish { ret } => run.outcome = s.finish(ret, now),
        }
    }

    fn same_stats(a: &Stats, b: &Stats) -> bool {
        a.counters == b.counters && a.hists.iter().zip(&b.hists).all(|(x, y)| x.buckets == y.buckets && x.sum == y.sum)
    }

    #[test]
    fn a_fast_read_is_recorded_as_its_outcome_and_nothing_else_is_fast() {
        let a = 0x10_0000u64;
        let mut calls = patched_classes();
        calls.extend([
            ("nothing to copy", std::vec![Begin { addr: a, len: 0, gup: READ }, Finish { ret: 0 }]),
            ("pmd", std::vec![Begin { addr: a, len: 4096, gup: READ }, LockVma { addr: a, ok: true }, Walk { addr: a, found: true, level: 1, anon: true }, Finish { ret: 4096 }]),
            ("file-backed with FOLL_ANON", std::vec![Begin { addr: a, len: 64, gup: READ | F.foll_anon }, LockVma { addr: a, ok: true }, Walk { addr: a, found: true, level: 0, anon: false }, Finish { ret: 64 }]),
            ("write", std::vec![Begin { addr: a, len: 8, gup: READ | F.foll_write }, Gup, Finish { ret: 8 }]),
            ("unobserved", std::vec![Begin { addr: a, len: 8, gup: READ }, Finish { ret: 8 }]),
            ("no entry", std::vec![Finish { ret: 8 }]),
        ]);
        let mut fast = 0;
        for contention in [false, true] {
            for reads in [ReadPath::Probed, ReadPath::Implied, ReadPath::Pending, ReadPath::NoLockless] {
                for (name, events) in &calls {
                    let events: Vec<Ev> = match reads {
                        ReadPath::Probed => events.clone(),
                        _ => events.iter().copied().filter(|e| !matches!(e, LockVma { .. })).collect(),
                    };
                    let Some((Finish { ret }, before)) = events.split_last() else { continue };
                    let (mut s, mut run) = (CallState::default(), Run { orphans: 0, acquisitions: Vec::new(), outcome: None });
                    for (i, ev) in before.iter().enumerate() {
                        step(&mut s, &mut run, reads, contention, *ev, 1000 + 10 * i as u64);
                    }
                    let now = 1000 + 10 * before.len() as u64;
                    let (mut by_fast, mut by_finish) = (s, s);
                    let outcome = by_finish.finish(*ret, now);
                    let what = std::format!("{name}, {reads:?}, contention {contention}");
                    match by_fast.finish_fast(*ret, now) {
                        Some(r) => {
                            fast += 1;
                            assert_eq!(by_fast, by_finish, "{what}");
                            let (mut x, mut y) = (Stats::ZERO, Stats::ZERO);
                            x.record_fast_read(&r);
                            y.record_call(&outcome.expect("finished"));
                            assert!(same_stats(&x, &y), "{what}");
                        }
                        None => {
                            assert_eq!(by_fast, s, "{what}: untouched");
                            assert_ne!(outcome.and_then(|o| o.path), Some(Path::Fast), "{what}");
                        }
                    }
                }
            }
        }
        // resident, straddle, nothing to copy, pmd, file-backed: probed, implied
        // and pending; a read no probe saw, implied (where every read enters
        // the loop); with and without contention events.
        assert_eq!(fast, 2 * (5 * 3 + 1));
    }

    /// The programs' hits, as `access.rs` and `vma.rs` count them: an entry
    /// adds to `HITS`; an exit or walk on an active call leaves its hit to
    /// the call's counters, every other run adds to `HITS`; with
    /// `Stats::implied_hits` each run is one hit once its call ended,
    /// whatever the calls' order, ends, missed probes and walks.
    #[test]
    fn every_program_run_is_one_hit() {
        use crate::Point;
        let points = [Point::AccessRemoteVmEntry, Point::AccessRemoteVmExit, Point::FolioWalkStartExit];
        let a = 0x10_0000u64;
        let kinds = [
            Begin { addr: a, len: 4096, gup: READ },
            Begin { addr: a, len: 0, gup: READ },
            Begin { addr: a, len: 64, gup: READ | F.foll_write },
            Begin { addr: a, len: 64, gup: READ | F.foll_anon },
            LockVma { addr: a, ok: true },
            LockVma { addr: a, ok: false },
            Walk { addr: a, found: true, level: 0, anon: true },
            Walk { addr: a + PAGE, found: true, level: 1, anon: false },
            Walk { addr: a, found: true, level: 2, anon: true },
            Walk { addr: a, found: true, level: 3, anon: true },
            Walk { addr: a, found: false, level: 0, anon: true },
            WalkNoPage { addr: a },
            Gup,
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 4096 },
            Finish { ret: 0 },
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut fast = 0;
        for round in 0..3000 {
            let (reads, contention) = ([ReadPath::Probed, ReadPath::Implied, ReadPath::Pending][round % 3], round % 2 == 0);
            let (mut s, mut stats, mut hits, mut runs) = (CallState::default(), Stats::ZERO, [0u64; 3], [0u64; 3]);
            let mut run = Run { orphans: 0, acquisitions: Vec::new(), outcome: None };
            let begin = |s: &mut CallState, stats: &mut Stats, hits: &mut [u64; 3], addr, len, gup, now| {
                hits[0] += 1;
                if let Some(walks) = s.begin(MM, addr, len, gup, F, false, reads, contention, now) {
                    hits[2] += u64::from(walks);
                    stats.add(Counter::MissedExits, 1);
                }
            };
            for i in 0..(4 + round % 29) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let ev = kinds[(seed % kinds.len() as u64) as usize];
                let now = 1000 + 10 * i as u64;
                match ev {
                    Begin { addr, len, gup } => {
                        runs[0] += 1;
                        begin(&mut s, &mut stats, &mut hits, addr, len, gup, now);
                    }
                    Walk { .. } | WalkNoPage { .. } => {
                        runs[2] += 1;
                        if s.is_active() {
                            step(&mut s, &mut run, reads, contention, ev, now);
                        } else {
                            hits[2] += 1;
                        }
                    }
                    Finish { ret } => {
                        runs[1] += 1;
                        if s.is_counted() {
                            if let Some(r) = s.finish_fast(ret, now) {
                                fast += 1;
                                stats.record_fast_read(&r);
                                continue;
                            }
                        }
                        match s.finish(ret, now) {
                            None => stats.add(Counter::MissedEntries, 1),
                            Some(o) => stats.record_call(&o),
                        }
                    }
                    _ => step(&mut s, &mut run, reads, contention, ev, now),
                }
            }
            // The last call ends: its exit seen, or missed and found open by
            // the thread's next call.
            if round % 2 == 1 {
                runs[0] += 1;
                begin(&mut s, &mut stats, &mut hits, a, 8, READ, 5000);
            }
            runs[1] += 1;
            match s.finish(8, 5010) {
                None => stats.add(Counter::MissedEntries, 1),
                Some(o) => stats.record_call(&o),
            }
            for (i, p) in points.iter().enumerate() {
                assert_eq!(hits[i] + stats.implied_hits(*p), runs[i], "round {round}: {p:?}");
            }
            assert_eq!(stats.implied_hits(Point::AccessRemoteVmEntry), 0);
            assert_eq!(stats.implied_hits(Point::LockVmaUnderRcuExit), 0);
        }
        // (Some of the calls were fast reads, the programs' common case.)
        assert!(fast > 100, "{fast} fast reads");
    }

    const READ: u32 = 0x10; // FOLL_FORCE-ish bits only: a read
    const PAGE: u64 = 4096;

    fn outcome(events: &[Ev]) -> Outcome {
        drive(events).outcome.expect("finished")
    }

    #[test]
    fn resident_page_is_fast() {
        let o = outcome(&[
            Begin { addr: 0x1000, len: 4096, gup: READ },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            Finish { ret: 4096 },
        ]);
        assert_eq!(
            o,
            Outcome {
                path: Some(Path::Fast),
                unobserved: false,
                reason: None,
                bytes: 4096,
                duration_ns: 30,
                hold_ns: None,
                lockless_bytes: 0,
                discarded_bytes: 0,
                vmas_locked: 1,
                walks: [1, 0, 0],
                other_walks: 0,
                anon_file_walk: false,
                gup_calls: 0,
                unwaited_acquisition: false,
            }
        );
    }

    #[test]
    fn never_written_page_falls_back_page_not_present() {
        let run = drive(&[
            Begin { addr: 0x1000, len: 4096, gup: READ },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: false, level: 0, anon: true },
            Wait { write: false },
            Got { ok: true },
            Gup,
            Finish { ret: 4096 },
        ]);
        let o = run.outcome.unwrap();
        assert_eq!(o.path, Some(Path::Fallback));
        assert_eq!(o.reason, Some(Reason::PageNotPresent));
        assert_eq!(o.lockless_bytes, 0);
        assert_eq!(o.hold_ns, Some(20));
        assert_eq!(o.duration_ns, 60);
        assert_eq!(o.gup_calls, 1);
        assert_eq!(o.walks, [0, 0, 0]);
        assert_eq!(
            run.acquisitions,
            [Acquisition {
                write: false,
                wait_ns: 10,
                failed: false
            }]
        );
    }

    #[test]
    fn straddling_into_an_unreadable_vma_is_unsuitable_with_lockless_bytes() {
        // 0x1800..0x2800: the first half in a readable VMA ending at 0x2000, the
        // second in a PROT_NONE VMA: locked, refused by the flags check, no walk.
        let o = outcome(&[
            Begin { addr: 0x1800, len: 4096, gup: READ },
            LockVma { addr: 0x1800, ok: true },
            Walk { addr: 0x1800, found: true, level: 0, anon: true },
            LockVma { addr: 0x2000, ok: true },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 2048 },
        ]);
        assert_eq!(o.path, Some(Path::Fallback));
        assert_eq!(o.reason, Some(Reason::VmaUnsuitable));
        assert_eq!(o.lockless_bytes, 0x800);
        assert_eq!(o.discarded_bytes, 0);
        assert_eq!(o.vmas_locked, 2);
        assert_eq!(o.walks, [1, 0, 0]);
    }

    #[test]
    fn straddling_two_readable_vmas_is_fast_with_two_vmas() {
        let o = outcome(&[
            Begin { addr: 0x1800, len: 4096, gup: READ },
            LockVma { addr: 0x1800, ok: true },
            Walk { addr: 0x1800, found: true, level: 0, anon: true },
            LockVma { addr: 0x2000, ok: true },
            Walk { addr: 0x2000, found: true, level: 0, anon: true },
            Finish { ret: 4096 },
        ]);
        assert_eq!((o.path, o.vmas_locked, o.walks), (Some(Path::Fast), 2, [2, 0, 0]));
    }

    #[test]
    fn hugetlb_vma_is_unsuitable_at_once() {
        let o = outcome(&[
            Begin { addr: 0x20_0000, len: 4096, gup: READ },
            LockVma { addr: 0x20_0000, ok: true },
            Wait { write: false },
            Got { ok: true },
            Gup,
            Finish { ret: 4096 },
        ]);
        assert_eq!((o.path, o.reason, o.lockless_bytes), (Some(Path::Fallback), Some(Reason::VmaUnsuitable), 0));
    }

    #[test]
    fn unmapped_address_fails_vma_lock_then_takes_read_and_write_locks() {
        // Patched: lock_vma_under_rcu NULL; old path: read lock, vma_lookup fails,
        // expand_stack drops it and takes the write lock, fails, returns 0.
        let run = drive(&[
            Begin { addr: 0x9000, len: 4096, gup: READ },
            LockVma { addr: 0x9000, ok: false },
            Wait { write: false },
            Got { ok: true },
            Wait { write: true },
            Got { ok: true },
            Finish { ret: 0 },
        ]);
        let o = run.outcome.unwrap();
        assert_eq!((o.path, o.reason, o.bytes), (Some(Path::Fallback), Some(Reason::VmaLockFailed), 0));
        assert_eq!(o.vmas_locked, 0);
        // Two acquisitions, read then write, each its own observation; hold from the first.
        assert_eq!(
            run.acquisitions,
            [
                Acquisition { write: false, wait_ns: 10, failed: false },
                Acquisition { write: true, wait_ns: 10, failed: false },
            ]
        );
        assert_eq!(o.hold_ns, Some(30));
    }

    #[test]
    fn unpatched_read_is_slow_even_with_expand_stack_downgrade() {
        let run = drive(&[
            Begin { addr: 0x7ffe_0000, len: 4096, gup: READ },
            Wait { write: false },
            Got { ok: true },
            Wait { write: true }, // expand_stack: write lock, then downgrade (no event)
            Got { ok: true },
            Gup,
            Finish { ret: 4096 },
        ]);
        let o = run.outcome.unwrap();
        assert_eq!((o.path, o.reason, o.lockless_bytes), (Some(Path::Slow), None, 0));
        assert_eq!(run.acquisitions.len(), 2);
        assert_eq!(o.hold_ns, Some(40));
    }

    #[test]
    fn writes_are_apart_and_never_lockless() {
        let o = outcome(&[
            Begin { addr: 0x1000, len: 8, gup: READ | F.foll_write },
            // A lock_vma_under_rcu on this thread during a write (a fault) is not lockless.
            LockVma { addr: 0x1000, ok: true },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 8 },
        ]);
        assert_eq!((o.path, o.reason, o.bytes, o.vmas_locked), (None, None, 8, 0));
    }

    #[test]
    fn killed_acquisition_is_a_failure_and_holds_nothing() {
        let run = drive(&[
            Begin { addr: 0x1000, len: 4096, gup: READ },
            LockVma { addr: 0x1000, ok: false },
            Wait { write: false },
            Got { ok: false },
            Finish { ret: 0 },
        ]);
        assert_eq!(run.acquisitions, [Acquisition { write: false, wait_ns: 10, failed: true }]);
        let o = run.outcome.unwrap();
        assert_eq!((o.path, o.hold_ns), (Some(Path::Fallback), None));
    }

    #[test]
    fn lockless_bytes_thrown_away_are_discarded() {
        // One resident page, then the next VMA cannot be locked (a hole): the old
        // path's vma_lookup/expand_stack fails and v1 returns 0.
        let o = outcome(&[
            Begin { addr: 0x1000, len: 8192, gup: READ },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            LockVma { addr: 0x2000, ok: false },
            Wait { write: false },
            Got { ok: true },
            Wait { write: true },
            Got { ok: true },
            Finish { ret: 0 },
        ]);
        assert_eq!((o.reason, o.lockless_bytes, o.discarded_bytes), (Some(Reason::VmaLockFailed), 4096, 4096));
        // The unpatched kernel returns the partial count: nothing discarded.
        let o = outcome(&[
            Begin { addr: 0x1000, len: 8192, gup: READ },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            LockVma { addr: 0x2000, ok: false },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 4096 },
        ]);
        assert_eq!(o.discarded_bytes, 0);
    }

    #[test]
    fn walk_without_page_and_unexplained_stops_are_other() {
        let o = outcome(&[
            Begin { addr: 0x1000, len: 8192, gup: READ },
            LockVma { addr: 0x1000, ok: true },
            WalkNoPage { addr: 0x1000 },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 8192 },
        ]);
        assert_eq!((o.reason, o.lockless_bytes), (Some(Reason::Other), 0));
        let o = outcome(&[
            Begin { addr: 0x1000, len: 8192, gup: READ },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 8192 },
        ]);
        assert_eq!((o.reason, o.lockless_bytes), (Some(Reason::Other), 0x0));
    }

    #[test]
    fn thp_walk_counts_at_pmd_level() {
        let o = outcome(&[
            Begin { addr: 0x20_0000, len: 4096, gup: READ },
            LockVma { addr: 0x20_0000, ok: true },
            Walk { addr: 0x20_0000, found: true, level: 1, anon: true },
            Finish { ret: 4096 },
        ]);
        assert_eq!(o.walks, [0, 1, 0]);
    }

    #[test]
    fn foll_anon_walk_in_a_file_vma_is_flagged_fast_or_not() {
        let o = outcome(&[
            Begin { addr: 0x1000, len: 100, gup: READ | F.foll_anon },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 0, anon: false },
            Finish { ret: 100 },
        ]);
        assert_eq!((o.path, o.anon_file_walk), (Some(Path::Fast), true));
        // Without FOLL_ANON, a file VMA is fine.
        let o = outcome(&[
            Begin { addr: 0x1000, len: 100, gup: READ },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 0, anon: false },
            Finish { ret: 100 },
        ]);
        assert!(!o.anon_file_walk);
    }

    #[test]
    fn unrelated_events_change_nothing() {
        let o = outcome(&[
            Begin { addr: 0x1000, len: 4096, gup: READ },
            LockVmaOtherMm { addr: 0x5000 },
            WaitOtherSem,
            Got { ok: true },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            Finish { ret: 4096 },
        ]);
        assert_eq!((o.path, o.vmas_locked, o.hold_ns), (Some(Path::Fast), 1, None));
        // Walks after the lock was taken are not lockless.
        let o = outcome(&[
            Begin { addr: 0x1000, len: 4096, gup: READ },
            Wait { write: false },
            Got { ok: true },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            Finish { ret: 4096 },
        ]);
        assert_eq!((o.path, o.vmas_locked, o.walks), (Some(Path::Slow), 0, [0, 0, 0]));
    }

    #[test]
    fn begin_clears_every_word_of_a_used_state_but_the_holders() {
        let f = Flags { foll_write: 1, foll_anon: 2 };
        let mut used = CallState::default();
        // SAFETY: integers only; every bit pattern is a valid CallState.
        unsafe { core::ptr::write_bytes(core::ptr::from_mut(&mut used).cast::<u8>(), 0xa5, core::mem::size_of::<CallState>()) };
        let left = (used.holder, used.cgroup_id);
        let mut fresh = CallState::default();
        let orphan = used.begin(0x10, 0x2000, 64, 0, f, false, ReadPath::Implied, false, 7);
        assert_eq!(fresh.begin(0x10, 0x2000, 64, 0, f, false, ReadPath::Implied, false, 7), None);
        // 0xa5a5a5a5 has F_ACTIVE set: the used state was a call in progress.
        assert!(orphan.is_some());
        // The holder and cgroup are a wait's, written when one begins: left.
        assert_eq!((used.holder, used.cgroup_id), left);
        (used.holder, used.cgroup_id) = (fresh.holder, fresh.cgroup_id);
        assert_eq!(used, fresh);
        used.clear();
        (used.holder, used.cgroup_id) = (HolderSnap::default(), 0);
        assert_eq!(used, CallState::default());
    }

    #[test]
    fn missed_probes_are_detected() {
        let run = drive(&[
            Begin { addr: 0x1000, len: 1, gup: READ },
            Begin { addr: 0x1000, len: 1, gup: READ },
            Finish { ret: 1 },
            Finish { ret: 1 },
        ]);
        assert_eq!(run.orphans, 1);
        let mut s = CallState::default();
        assert_eq!(s.finish(1, 5), None);
        assert_eq!(s.lock_wait_end(true, 5), None);
    }

    #[test]
    fn a_read_no_probe_saw_is_unobserved_never_fast() {
        // The mmap_lock probe (or lock_vma_under_rcu's) was skipped: nothing
        // says which path the read took.
        let o = outcome(&[Begin { addr: 0x1000, len: 4096, gup: READ }, Finish { ret: 4096 }]);
        assert_eq!((o.path, o.unobserved, o.bytes), (None, true, 4096));
        let mut stats = Stats::ZERO;
        stats.record_call(&o);
        let c = |k: Counter| stats.counters[k as usize];
        assert_eq!(c(Counter::ReadsUnobserved), 1);
        for k in [Counter::ReadsFast, Counter::ReadsFallback, Counter::ReadsSlow, Counter::Writes, Counter::ReadBytesFast] {
            assert_eq!(c(k), 0, "{k:?}");
        }
        // A write is a write, seen or not.
        let o = outcome(&[Begin { addr: 0x1000, len: 8, gup: READ | F.foll_write }, Finish { ret: 8 }]);
        assert_eq!((o.path, o.unobserved), (None, false));
    }

    #[test]
    fn zero_length_read_is_fast() {
        let o = outcome(&[Begin { addr: 0x1000, len: 0, gup: READ }, Finish { ret: 0 }]);
        assert_eq!((o.path, o.vmas_locked), (Some(Path::Fast), 0));
    }

    #[test]
    fn selftest_calls_are_marked() {
        let mut s = CallState::default();
        s.begin(MM, 0x1000, 4096, READ, F, true, ReadPath::Probed, false, 0);
        assert!(s.is_active() && !s.is_counted());
        s.begin(MM, 0x1000, 4096, READ, F, false, ReadPath::Probed, false, 0);
        assert!(s.is_counted());
    }

    #[test]
    fn stats_record_exactly_what_the_outcome_says() {
        let mut st = Stats::ZERO;
        st.record_call(&outcome(&[
            Begin { addr: 0x1800, len: 4096, gup: READ },
            LockVma { addr: 0x1800, ok: true },
            Walk { addr: 0x1800, found: true, level: 0, anon: true },
            LockVma { addr: 0x2000, ok: true },
            Wait { write: false },
            Got { ok: true },
            Gup,
            Finish { ret: 4096 },
        ]));
        st.record_call(&outcome(&[
            Begin { addr: 0x1000, len: 4096, gup: READ },
            LockVma { addr: 0x1000, ok: true },
            Walk { addr: 0x1000, found: true, level: 1, anon: true },
            Finish { ret: 4096 },
        ]));
        st.record_call(&outcome(&[
            Begin { addr: 0x1000, len: 16, gup: READ | F.foll_write },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 16 },
        ]));
        st.record_acquisition(&Acquisition { write: true, wait_ns: 4, failed: true }, true);
        st.record_lock_vma(false, false);
        let c = |k: Counter| st.counters[k as usize];
        assert_eq!(c(Counter::ReadsFast), 1);
        assert_eq!(c(Counter::ReadsFallback), 1);
        assert_eq!(c(Counter::ReadsSlow), 0);
        assert_eq!(c(Counter::Writes), 1);
        assert_eq!(c(Counter::FallbackVmaUnsuitable), 1);
        assert_eq!(c(Counter::FallbackLocklessBytes), 0x800);
        assert_eq!(c(Counter::ReadBytesFast), 4096);
        assert_eq!(c(Counter::ReadBytesFallback), 4096);
        assert_eq!(c(Counter::WrittenBytes), 16);
        assert_eq!(c(Counter::MultiVmaReadsFallback), 1);
        assert_eq!(c(Counter::MultiVmaReadsFast), 0);
        assert_eq!(c(Counter::GupCallsFallback), 1);
        assert_eq!(c(Counter::FolioWalksPte), 1);
        assert_eq!(c(Counter::FolioWalksPmd), 1);
        assert_eq!(c(Counter::AcquireFailuresHost), 1);
        assert_eq!(c(Counter::LockVmaOther), 1);
        assert_eq!(c(Counter::LockVmaFailuresOther), 1);
        let total: u64 = st.counters.iter().sum();
        assert_eq!(total, 1 + 1 + 1 + 1 + 0x800 + 4096 + 4096 + 16 + 1 + 1 + 1 + 1 + 1 + 1 + 1);
        assert_eq!(st.hists[Hist::ReadDurationFallback as usize].buckets.iter().sum::<u64>(), 1);
        assert_eq!(st.hists[Hist::ReadVmasFallback as usize].buckets[1], 1); // 2 VMAs: le=2
        assert_eq!(st.hists[Hist::WaitHostWrite as usize].buckets[2], 1); // 4 ns: le=4
        assert_eq!(st.hists[Hist::Hold as usize].sum, 20 + 10);
        assert_eq!(st.hists[Hist::WriteDuration as usize].sum, 30);
        let _ = PAGE;
    }

    /// The patched kernel's read classes as the probes see them with
    /// `lock_vma_under_rcu()` probed: (name, events, reason when probed).
    fn patched_classes() -> Vec<(&'static str, Vec<Ev>)> {
        let a = 0x10_0000u64;
        // A read begins where its first step is (the untagged address).
        let read = |ev: &[Ev]| {
            let start = match ev.first() {
                Some(LockVma { addr, .. }) => *addr,
                _ => a,
            };
            let mut v = std::vec![Begin { addr: start, len: 4096, gup: READ }];
            v.extend_from_slice(ev);
            v
        };
        let locked = [Wait { write: false }, Got { ok: true }];
        let mut classes = std::vec![
            ("resident", read(&[LockVma { addr: a, ok: true }, Walk { addr: a, found: true, level: 0, anon: true }, Finish { ret: 4096 }])),
            (
                "straddle",
                read(&[
                    LockVma { addr: a + PAGE / 2, ok: true },
                    Walk { addr: a + PAGE / 2, found: true, level: 0, anon: true },
                    LockVma { addr: a + PAGE, ok: true },
                    Walk { addr: a + PAGE, found: true, level: 0, anon: true },
                    Finish { ret: 4096 },
                ]),
            ),
            ("zero page", read(&[LockVma { addr: a, ok: true }, Walk { addr: a, found: false, level: 0, anon: true }])),
            ("hugetlb", read(&[LockVma { addr: a, ok: true }])),
            ("unmapped", read(&[LockVma { addr: a, ok: false }])),
            (
                "hole straddle",
                read(&[
                    LockVma { addr: a + PAGE / 2, ok: true },
                    Walk { addr: a + PAGE / 2, found: true, level: 0, anon: true },
                    LockVma { addr: a + PAGE, ok: false },
                ]),
            ),
        ];
        for (name, ev) in classes.iter_mut() {
            if *name != "resident" && *name != "straddle" {
                ev.extend_from_slice(&locked);
                if *name == "zero page" || *name == "hugetlb" {
                    ev.push(Gup);
                }
                ev.push(Finish { ret: if *name == "hole straddle" || *name == "unmapped" { 0 } else { 4096 } });
            }
        }
        classes
    }

    /// A 4 KiB read from the middle of a page whose VMA ends at the next page.
    const CROSS_START: u64 = 0x10000 + PAGE / 2;
    const CROSS_END: u64 = 0x10000 + PAGE;
    /// A VMA locked, the 4 KiB read runs past its end, no walk, then the
    /// slow path copies both pages (v2's bail; v1 at a crossing VMA it refuses).
    const LOCKED_PAST_ITS_END: [Ev; 7] = [
        Begin { addr: CROSS_START, len: PAGE as i32, gup: READ },
        LockVmaEnd { addr: CROSS_START, end: CROSS_END },
        Wait { write: false },
        Got { ok: true },
        Gup,
        Gup,
        Finish { ret: PAGE as i64 },
    ];

    #[test]
    fn v2_sends_a_read_past_its_vma_end_to_the_slow_path_whole() {
        // One VMA locked, no walk: the length check bailed, the slow path copies.
        let o = outcome(&LOCKED_PAST_ITS_END);
        assert_eq!((o.path, o.reason, o.lockless_bytes, o.vmas_locked), (Some(Path::Fallback), Some(Reason::CrossesVmaEnd), 0, 1));
        // The same VMA, a read that fits: a refused VMA is unsuitable.
        let o = outcome(&[
            Begin { addr: CROSS_START, len: (PAGE / 2) as i32, gup: READ },
            LockVmaEnd { addr: CROSS_START, end: CROSS_END },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: (PAGE / 2) as i64 },
        ]);
        assert_eq!(o.reason, Some(Reason::VmaUnsuitable));
        // vm_end not known: never called crossing.
        let o = outcome(&[
            Begin { addr: CROSS_START, len: PAGE as i32, gup: READ },
            LockVma { addr: CROSS_START, ok: true },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: PAGE as i64 },
        ]);
        assert_eq!(o.reason, Some(Reason::VmaUnsuitable));
    }

    #[test]
    fn v1_crosses_locklessly_and_says_crossing_only_at_an_unsuitable_vma() {
        // v1 walks the first VMA to its end and locks the next: fast.
        let o = outcome(&[
            Begin { addr: CROSS_START, len: PAGE as i32, gup: READ },
            LockVmaEnd { addr: CROSS_START, end: CROSS_END },
            Walk { addr: CROSS_START, found: true, level: 0, anon: true },
            LockVmaEnd { addr: CROSS_END, end: CROSS_END + 16 * PAGE },
            Walk { addr: CROSS_END, found: true, level: 0, anon: true },
            Finish { ret: PAGE as i64 },
        ]);
        assert_eq!((o.path, o.reason, o.vmas_locked, o.walks[0]), (Some(Path::Fast), None, 2, 2));
        // v1, the first VMA crossing and unsuitable (hugetlb): no walk, the
        // same events as v2's bail, so crossing is said; the second VMA
        // unsuitable after a walk of the first: it does not cross (the
        // request ends inside it), unsuitable.
        assert_eq!(outcome(&LOCKED_PAST_ITS_END).reason, Some(Reason::CrossesVmaEnd));
        let o = outcome(&[
            Begin { addr: CROSS_START, len: PAGE as i32, gup: READ },
            LockVmaEnd { addr: CROSS_START, end: CROSS_END },
            Walk { addr: CROSS_START, found: true, level: 0, anon: true },
            LockVmaEnd { addr: CROSS_END, end: CROSS_END + 16 * PAGE },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: PAGE as i64 },
        ]);
        assert_eq!((o.reason, o.lockless_bytes), (Some(Reason::VmaUnsuitable), PAGE / 2));
    }

    #[test]
    fn without_the_vma_probe_a_patched_kernel_reads_the_same_but_vma_reasons_merge() {
        for (name, events) in patched_classes() {
            let probed = drive(&events).outcome.unwrap();
            let unprobed: Vec<Ev> = events.iter().copied().filter(|e| !matches!(e, LockVma { .. })).collect();
            let implied = drive_with(ReadPath::Implied, &unprobed).outcome.unwrap();
            let merged = probed.reason.map(|r| match r {
                Reason::VmaLockFailed | Reason::VmaUnsuitable | Reason::CrossesVmaEnd => Reason::VmaLockFailedOrUnsuitable,
                r => r,
            });
            // Times differ only because fewer events (10 ns apart) were driven.
            let times = Outcome { duration_ns: implied.duration_ns, hold_ns: implied.hold_ns, ..probed };
            assert_eq!(implied.hold_ns.is_some(), probed.hold_ns.is_some(), "{name}");
            assert_eq!(implied, Outcome { reason: merged, vmas_locked: 0, ..times }, "{name}");
            assert!(implied.reason.is_none_or(|r| r.reported(false)), "{name}");
            assert!(probed.reason.is_none_or(|r| r.reported(true)), "{name}");
            // While the verdict is pending, a walk is evidence; no walk is unobserved.
            let pending = drive_with(ReadPath::Pending, &unprobed).outcome.unwrap();
            if unprobed.iter().any(|e| matches!(e, Walk { .. })) {
                assert_eq!(pending, implied, "{name}");
            } else {
                assert_eq!((pending.path, pending.unobserved, pending.reason), (None, true, None), "{name}");
            }
        }
    }

    #[test]
    fn without_the_vma_probe_a_vma_stop_is_at_the_end_of_the_last_walked_entry() {
        // Half a page, then a hole: the loop copied to the page's end.
        let hole = [
            Begin { addr: 0x1800, len: 4096, gup: READ },
            Walk { addr: 0x1800, found: true, level: 0, anon: true },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 0 },
        ];
        let o = drive_with(ReadPath::Implied, &hole).outcome.unwrap();
        assert_eq!((o.path, o.reason), (Some(Path::Fallback), Some(Reason::VmaLockFailedOrUnsuitable)));
        assert_eq!((o.lockless_bytes, o.discarded_bytes), (0x800, 0x800));
        // From inside a PMD-mapped huge page into an unsuitable VMA after it:
        // the rest of the 2 MiB entry, bounded by the read's length.
        let thp = [
            Begin { addr: 0x40_0000 - 0x100, len: 0x1000, gup: READ },
            Walk { addr: 0x40_0000 - 0x100, found: true, level: 1, anon: true },
            Wait { write: false },
            Got { ok: true },
            Finish { ret: 0x1000 },
        ];
        assert_eq!(drive_with(ReadPath::Implied, &thp).outcome.unwrap().lockless_bytes, 0x100);
        assert_eq!(entry_end(0x40_0000, 1), 0x60_0000);
        assert_eq!(entry_end(0x7fff_ffff_f000, 2), 0x8000_0000_0000);
        // A failing walk stops at its own address.
        let zero = [
            Begin { addr: 0x1000, len: 0x2000, gup: READ },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            Walk { addr: 0x2000, found: false, level: 0, anon: true },
            Wait { write: false },
            Got { ok: true },
            Gup,
            Finish { ret: 0x2000 },
        ];
        let o = drive_with(ReadPath::Implied, &zero).outcome.unwrap();
        assert_eq!((o.reason, o.lockless_bytes), (Some(Reason::PageNotPresent), 0x1000));
    }

    #[test]
    fn implied_reads_leave_writes_unpatched_reads_and_empty_reads_alone() {
        // A write never runs the loop.
        let w = drive_with(
            ReadPath::Implied,
            &[Begin { addr: 0x1000, len: 16, gup: READ | F.foll_write }, Wait { write: false }, Got { ok: true }, Finish { ret: 16 }],
        );
        assert_eq!(w.outcome.unwrap().path, None);
        // A zero-length read has nothing to loop over: fast, not a fallback.
        let z = drive_with(ReadPath::Implied, &[Begin { addr: 0x1000, len: 0, gup: READ }, Finish { ret: 0 }]);
        assert_eq!((z.outcome.unwrap().path, z.outcome.unwrap().unobserved), (Some(Path::Fast), false));
        // On an unpatched kernel the daemon keeps `Probed`: a locked read is slow.
        let slow = [Begin { addr: 0x1000, len: 4096, gup: READ }, Wait { write: false }, Got { ok: true }, Gup, Finish { ret: 4096 }];
        assert_eq!(drive_with(ReadPath::Probed, &slow).outcome.unwrap().path, Some(Path::Slow));
        assert_eq!(drive_with(ReadPath::Implied, &slow).outcome.unwrap().path, Some(Path::Fallback));
        assert!(drive_with(ReadPath::Pending, &slow).outcome.unwrap().unobserved);
        for v in [0, 1, 2, 9] {
            assert_eq!(ReadPath::from_u32(v) as u32, if v > 2 { 0 } else { v });
        }
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(r as u32), r);
        }
    }

    #[test]
    fn a_wait_is_real_only_while_its_thread_sleeps_and_the_lock_has_waiters() {
        const TASK_RUNNING: u32 = 0x0;
        const TASK_INTERRUPTIBLE: u32 = 0x1;
        const TASK_KILLABLE: u32 = 0x100 | TASK_UNINTERRUPTIBLE;
        // A reader queued behind a writer: 0x3 = writer locked + waiters.
        assert!(wait_is_real(Some(TASK_KILLABLE), Some(RWSEM_WRITER_LOCKED | RWSEM_FLAG_WAITERS)));
        // Its end was never seen and it has the lock now: running, or asleep
        // elsewhere (a nanosleep is interruptible), or the queue is empty.
        assert!(!wait_is_real(Some(TASK_RUNNING), Some(RWSEM_WRITER_LOCKED | RWSEM_FLAG_WAITERS)));
        assert!(!wait_is_real(Some(TASK_INTERRUPTIBLE), Some(RWSEM_FLAG_WAITERS)));
        assert!(!wait_is_real(Some(TASK_KILLABLE), Some(1 << RWSEM_READER_SHIFT)));
        // What is not known does not rule a wait out.
        assert!(wait_is_real(None, None));
        assert!(wait_is_real(Some(TASK_KILLABLE), None));
        assert!(wait_is_real(None, Some(RWSEM_FLAG_WAITERS)));
    }

    /// Remote waits from contention events, which fire only when the lock is
    /// contended: the call's own evidence (it takes the lock at its start, or
    /// a GUP ran under it) says it was taken, and an acquisition no wait was
    /// seen for is one of 0. The path, reason and bytes are those of the lock
    /// probes' mode, event for event.
    #[test]
    fn waits_from_contention_count_what_did_not_wait() {
        let unpatched = [Begin { addr: 0x1000, len: 4096, gup: READ }, Gup, Finish { ret: 4096 }];
        let run = drive_in(ReadPath::NoLockless, true, &unpatched);
        let o = run.outcome.unwrap();
        assert_eq!((o.path, o.unwaited_acquisition, o.hold_ns), (Some(Path::Slow), true, Some(20)), "held from the start");
        // The same read with the lock probes: the acquisition is theirs to count.
        let probed = drive_in(ReadPath::NoLockless, false, &[Begin { addr: 0x1000, len: 4096, gup: READ }, Wait { write: false }, Got { ok: true }, Gup, Finish { ret: 4096 }]);
        let p = probed.outcome.unwrap();
        assert_eq!((p.path, p.unwaited_acquisition, probed.acquisitions.len()), (Some(Path::Slow), false, 1));
        // A zero-length read on a kernel without the lockless path still took the lock.
        let empty = drive_in(ReadPath::NoLockless, true, &[Begin { addr: 0x1000, len: 0, gup: READ }, Finish { ret: 0 }]).outcome.unwrap();
        assert_eq!((empty.path, empty.unwaited_acquisition), (Some(Path::Slow), true));

        // Contended: the wait is the acquisition, none is added at the exit.
        let contended = drive_in(
            ReadPath::NoLockless,
            true,
            &[Begin { addr: 0x1000, len: 4096, gup: READ }, Wait { write: false }, Got { ok: true }, Gup, Finish { ret: 4096 }],
        );
        let c = contended.outcome.unwrap();
        assert_eq!((c.path, c.unwaited_acquisition, contended.acquisitions.len()), (Some(Path::Slow), false, 1));
        assert_eq!(contended.acquisitions[0].wait_ns, 10);
        assert_eq!(c.hold_ns, Some(20), "held from the wait's end");

        // The lockless loop's fallback: the first GUP is the lock; held from then.
        let fallback = [
            Begin { addr: 0x1000, len: 8192, gup: READ },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            Walk { addr: 0x2000, found: false, level: 0, anon: true },
            Gup,
            Finish { ret: 8192 },
        ];
        let f = drive_in(ReadPath::Implied, true, &fallback).outcome.unwrap();
        let with_probes = drive_in(
            ReadPath::Implied,
            false,
            &[
                Begin { addr: 0x1000, len: 8192, gup: READ },
                Walk { addr: 0x1000, found: true, level: 0, anon: true },
                Walk { addr: 0x2000, found: false, level: 0, anon: true },
                Wait { write: false },
                Got { ok: true },
                Gup,
                Finish { ret: 8192 },
            ],
        )
        .outcome
        .unwrap();
        assert_eq!((f.path, f.reason, f.lockless_bytes), (Some(Path::Fallback), Some(Reason::PageNotPresent), PAGE));
        assert_eq!((f.path, f.reason, f.lockless_bytes, f.walks), (with_probes.path, with_probes.reason, with_probes.lockless_bytes, with_probes.walks));
        assert_eq!((f.unwaited_acquisition, f.hold_ns), (true, Some(10)));

        // Fast: no lock, nothing counted.
        let fast = drive_in(
            ReadPath::Implied,
            true,
            &[Begin { addr: 0x1000, len: 4096, gup: READ }, Walk { addr: 0x1000, found: true, level: 0, anon: true }, Finish { ret: 4096 }],
        )
        .outcome
        .unwrap();
        assert_eq!((fast.path, fast.unwaited_acquisition, fast.hold_ns), (Some(Path::Fast), false, None));

        // A write takes the lock first on every kernel.
        let write = drive_in(ReadPath::Implied, true, &[Begin { addr: 0x1000, len: 8, gup: READ | F.foll_write }, Gup, Finish { ret: 8 }]).outcome.unwrap();
        assert_eq!((write.path, write.unwaited_acquisition, write.hold_ns), (None, true, Some(20)));

        // A read into a hole after the loop's first page: the slow path takes
        // the lock, finds no VMA and calls expand_stack(), no GUP; v1 returns 0.
        let hole = [
            Begin { addr: 0x1000, len: 8192, gup: READ },
            Walk { addr: 0x1000, found: true, level: 0, anon: true },
            Walk { addr: 0x2000, found: false, level: 0, anon: true },
            ExpandStack,
            Finish { ret: 0 },
        ];
        let h = drive_in(ReadPath::Implied, true, &hole).outcome.unwrap();
        assert_eq!((h.path, h.lockless_bytes, h.discarded_bytes, h.unwaited_acquisition, h.hold_ns), (Some(Path::Fallback), PAGE, PAGE, true, Some(10)));

        // A wait whose end no program saw (a skipped run): no acquisition made up.
        let unseen_end = drive_in(ReadPath::NoLockless, true, &[Begin { addr: 0x1000, len: 4096, gup: READ }, Wait { write: false }, Gup, Finish { ret: 4096 }]);
        assert_eq!((unseen_end.outcome.unwrap().unwaited_acquisition, unseen_end.acquisitions.len()), (false, 0));

        // Killed while waiting: the failed wait is the acquisition.
        let killed = drive_in(ReadPath::NoLockless, true, &[Begin { addr: 0x1000, len: 4096, gup: READ }, Wait { write: false }, Got { ok: false }, Finish { ret: 0 }]);
        assert_eq!((killed.outcome.unwrap().unwaited_acquisition, killed.acquisitions[0].failed), (false, true));
    }

    /// `record_call` counts the unwaited acquisition as one read wait of 0.
    #[test]
    fn an_unwaited_acquisition_is_a_wait_of_zero() {
        let run = drive_in(ReadPath::NoLockless, true, &[Begin { addr: 0x1000, len: 4096, gup: READ }, Gup, Finish { ret: 4096 }]);
        let mut st = Stats::ZERO;
        st.record_call(&run.outcome.unwrap());
        let h = &st.hists[Hist::WaitRemoteRead as usize];
        assert_eq!((h.buckets[0], h.buckets.iter().sum::<u64>(), h.sum), (1, 1, 0));
        assert_eq!(st.counters[Counter::ReadsSlow as usize], 1);
    }
}
