//! A target process whose mmap_lock a thread of known tid holds on request,
//! and the holder's own clock for how long that was. Five kinds of hold:
//!
//! - [`Kind::Munlock`] (`rvm-testkit stall-target --kind munlock --region-mb N`):
//!   `munlock()` of a large mlocked, populated (non-THP) region holds the lock
//!   for write for tens of ms. The region is mapped, filled and mlocked before
//!   `ready`; before each `go` it is mlocked again if it is not (that too walks
//!   every page under the write lock).
//! - [`Kind::Mlock`] (`--kind mlock --region-mb N`): the reverse,
//!   `mlock2(MLOCK_ONFAULT)` of the populated region (munlocked, untimed,
//!   before each `go`).
//! - [`Kind::Merge`] (`--kind merge --hold-ms N`): one `mprotect()` that merges
//!   many alternating-protection VMAs holds the lock for write for at least N ms
//!   (calibrated; see [`Merge`]).
//! - [`Kind::Unmap`] (`--kind unmap --region-mb N`): `munmap()` of a populated
//!   region, reader-owned for most of it, with the readers kind's writer.
//! - [`Kind::Readers`] (`--kind readers --hold-ms N`): a thread holds the lock
//!   for *read* for at least N ms (`MADV_POPULATE_READ`, calibrated; see
//!   [`Populate`]) and a second thread can then queue an `mprotect()` behind it
//!   as a writer, so that any new reader queues too (see [`Kind::Readers`] for
//!   why, from the kernel's rwsem code).
//!
//! Protocol (stdout lines of the target, answers to stdin lines):
//!
//! - at start: `ready TID` (munlock, mlock, merge: the holder thread, comm
//!   [`HOLDER_COMM`]) or `ready TID_A TID_B` (readers: the read holder, comm
//!   [`READ_HOLDER_COMM`], and the writer, comm [`WRITE_WAITER_COMM`]);
//! - `hold` → the holder prepares (outside the timed part), prints `go` right
//!   before the timed syscall and `held NS END` after it: NS its length by the
//!   holder's clock, END `CLOCK_MONOTONIC` (ns) when it returned;
//! - readers only, `write` → the writer prints `wgo` right before its
//!   `mprotect()` and `waited NS END` after it (same clocks). The writer starts
//!   only while the read hold is under way, at least [`WRITER_DELAY`] after its
//!   `go`, else it answers `error ...`.
//!
//! A failure is printed as `error MESSAGE` (and on stderr) and ends the target.
//! Calibration notes go to stderr, one line each.
//!
//! Native timings on the dev host (Linux 6.18, x86-64 VM, not emulated), for
//! sizing: the merge costs ~450 ns per VMA with 8k VMAs, ~700 ns with 1M;
//! `MADV_POPULATE_READ` costs ~117 ns per page (shared zero page). Under QEMU
//! TCG expect 10–50× that; the calibration measures, it does not assume.
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::workload::PAGE;

/// The holder thread's name (its `comm`) for the munlock and merge kinds.
pub const HOLDER_COMM: &str = "holder";
/// The readers kind: the thread that holds the lock for read.
pub const READ_HOLDER_COMM: &str = "rholder";
/// The readers kind: the thread that queues as a writer behind the read hold.
pub const WRITE_WAITER_COMM: &str = "wwaiter";

/// The readers kind: how long after the read holder's `go` (at least) the
/// writer enters its `mprotect()`, so that the holder is surely inside
/// `madvise()` with the lock taken (it prints `go` just before).
pub const WRITER_DELAY: Duration = Duration::from_millis(50);
/// The unmap kind's: past the write-locked part of `munmap()` (detaching one
/// VMA: microseconds), well before the zap ends (70–150 ms under TCG).
pub const UNMAP_WRITER_DELAY: Duration = Duration::from_millis(20);

/// `MADV_POPULATE_READ` (Linux 5.14+; not in every libc crate version).
const MADV_POPULATE_READ: i32 = 22;
/// Calibrated sizes aim this much above the wanted hold.
const MARGIN: f64 = 1.25;
/// VMAs the merge leaves to the rest of the process under `max_map_count`.
const MAP_HEADROOM: usize = 2000;

/// What the target holds, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `munlock()` of a `region_mb` MiB mlocked region: a write hold of tens of ms.
    Munlock { region_mb: usize },
    /// One `mprotect()` merging alternating VMAs: a write hold of at least
    /// `hold_ms`. See [`Merge`].
    Merge { hold_ms: u64 },
    /// `MADV_POPULATE_READ`: a read hold of at least `hold_ms`, with a writer
    /// that can queue behind it. See [`Populate`] for why the read lock is
    /// held throughout.
    ///
    /// Why a reader arriving while the writer waits queues behind it (read in
    /// kernel/locking/rwsem.c of v6.18; these paths are the same in v6.12):
    ///
    /// - The writer (`mprotect()` → `mmap_write_lock_killable()`) fails the
    ///   fast path (the reader count is not 0). `rwsem_optimistic_spin()` on a
    ///   reader-owned lock gives up after `rwsem_rspin_threshold()` (10–25 µs)
    ///   and marks the lock nonspinnable; the writer then joins the wait list,
    ///   as first waiter sets `RWSEM_FLAG_WAITERS`, and sleeps `TASK_KILLABLE`
    ///   (state `D` in `/proc/PID/task/TID/stat`, which
    ///   [`StallTarget::wait_writer_queued`] polls).
    /// - A new reader (e.g. `/proc/PID/cmdline`: `access_remote_vm()` →
    ///   `mmap_read_lock_killable()`) fails the fast path `rwsem_read_trylock()`,
    ///   because `RWSEM_FLAG_WAITERS` is in `RWSEM_READ_FAILED_MASK`. In
    ///   `rwsem_down_read_slowpath()` the owner field has `RWSEM_READER_OWNED`
    ///   (set by the read holder), `rcnt` is 2 (the holder plus this reader's
    ///   own bias, added by the failed trylock) and `RWSEM_WRITER_LOCKED` is
    ///   clear, so it goes straight to `queue:` — the "reader optimistic lock
    ///   stealing" branch is skipped. Queued behind the writer, its
    ///   `rwsem_cond_wake_waiter()` sees active readers and asks for
    ///   `RWSEM_WAKE_READERS`, and `rwsem_mark_wake()` wakes nothing when the
    ///   first waiter is a writer (writers are woken only by
    ///   `RWSEM_WAKE_ANY`). So it sleeps until the holder's `up_read()` wakes
    ///   the writer, the writer's `mprotect()` is done and its `up_write()`
    ///   wakes the reader.
    /// - Only before the writer is queued (while it spins, microseconds) can a
    ///   new reader join the read holder without waiting; and a reader that
    ///   found `rcnt == 1` (nobody holding) may steal. Neither applies once the
    ///   writer sleeps.
    Readers { hold_ms: u64 },
    /// `mlock2(MLOCK_ONFAULT)` of a `region_mb` MiB region already populated
    /// (and munlocked again before each hold, untimed): a write hold of tens
    /// of ms, the page-table walk that marks every page mlocked (see
    /// `Munlock::set_locked` for why not plain `mlock()`).
    Mlock { region_mb: usize },
    /// `munmap()` of a `region_mb` MiB populated region (mapped and filled
    /// again before each hold, untimed): the kernel downgrades the lock to
    /// read before it zaps the pages (`mmap_write_downgrade()`: 6.1's
    /// `__do_munmap`, `vms_complete_munmap_vmas` from 6.12), so most of the
    /// hold is reader-owned, with the unmapping thread as the last reader. The
    /// same two threads as [`Kind::Readers`]; the writer starts
    /// [`UNMAP_WRITER_DELAY`] into the hold (the hold is short under TCG).
    Unmap { region_mb: usize },
}

impl Kind {
    /// The kind named on the command line (`munlock`, `mlock`, `merge`,
    /// `readers`, `unmap`).
    pub fn from_args(name: &str, region_mb: usize, hold_ms: u64) -> Result<Kind> {
        Ok(match name {
            "munlock" => Kind::Munlock { region_mb },
            "mlock" => Kind::Mlock { region_mb },
            "unmap" => Kind::Unmap { region_mb },
            "merge" => Kind::Merge { hold_ms },
            "readers" => Kind::Readers { hold_ms },
            other => bail!("unknown stall kind {other:?} (munlock, mlock, merge, readers, unmap)"),
        })
    }

    /// The `stall-target` arguments that start a target of this kind.
    fn args(&self) -> Vec<String> {
        let (kind, flag, value) = match *self {
            Kind::Munlock { region_mb } => ("munlock", "--region-mb", region_mb as u64),
            Kind::Mlock { region_mb } => ("mlock", "--region-mb", region_mb as u64),
            Kind::Unmap { region_mb } => ("unmap", "--region-mb", region_mb as u64),
            Kind::Merge { hold_ms } => ("merge", "--hold-ms", hold_ms),
            Kind::Readers { hold_ms } => ("readers", "--hold-ms", hold_ms),
        };
        ["stall-target", "--kind", kind, flag, &value.to_string()].map(String::from).to_vec()
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of the `END` fields, common to all
/// processes of the machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One line on stdout, whole (the readers kind prints from two threads).
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn errno(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// A private anonymous mapping with PTE-level pages, unmapped on drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, prot: i32, flags: i32) -> Result<Mapping> {
        let addr = crate::workload::map(len, prot, libc::MAP_PRIVATE | flags)?;
        Ok(Mapping { addr, len })
    }

    fn page(&self, page: usize) -> *mut libc::c_void {
        debug_assert!(page * PAGE < self.len);
        // SAFETY: inside the mapping.
        unsafe { self.addr.add(page * PAGE).cast() }
    }

    fn mprotect(&self, first: usize, pages: usize, prot: i32) -> Result<()> {
        // SAFETY: a page range of our own mapping; no Rust references into it.
        if unsafe { libc::mprotect(self.page(first), pages * PAGE, prot) } != 0 {
            return Err(errno("mprotect"));
        }
        Ok(())
    }

    /// `MADV_POPULATE_READ` over the whole mapping.
    fn populate_read(&self) -> Result<()> {
        // SAFETY: our own mapping.
        if unsafe { libc::madvise(self.addr.cast(), self.len, MADV_POPULATE_READ) } != 0 {
            return Err(errno("madvise(MADV_POPULATE_READ) (Linux 5.14+)"));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no references into it outlive self.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

fn phys_bytes() -> usize {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    if pages > 0 { pages as usize * PAGE } else { 1 << 30 }
}

/// One kind of hold, done by one thread.
pub(crate) trait Holder {
    /// Gets ready for the next hold; not timed, runs before `go`.
    fn prepare(&mut self) -> Result<()>;
    /// The timed syscall.
    fn hold(&mut self) -> Result<()>;
    /// Learns from how long the hold took (recalibration).
    fn held(&mut self, took: Duration);
    /// A write hold's system call range (address, length): the address is
    /// in a VMA the hold modifies (so write-locks per VMA, where the kernel
    /// has per-VMA locks): a lockless read there must fall back.
    fn range(&self) -> Option<(usize, usize)> {
        None
    }
}

/// When the read holder's current hold started (readers kind), for the writer.
type Since = Arc<Mutex<Option<Instant>>>;

/// Answers each `hold` command: prepare, `go`, the timed hold, `held NS END`.
fn serve<H: Holder>(holder: &mut H, commands: impl Iterator<Item = Result<String>>, since: Option<&Since>) -> Result<()> {
    for command in commands {
        if command? != "hold" {
            continue;
        }
        holder.prepare()?;
        // Set before `go`, so that a `write` sent on `go` always finds it.
        if let Some(since) = since {
            *since.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(Instant::now());
        }
        match holder.range() {
            Some((addr, len)) => say(&format!("go {addr:#x} {len}"))?,
            None => say("go")?,
        }
        let start = Instant::now();
        let result = holder.hold();
        let took = start.elapsed();
        let end = monotonic_ns();
        if let Some(since) = since {
            *since.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = None;
        }
        result?;
        say(&format!("held {} {end}", took.as_nanos()))?;
        holder.held(took);
    }
    Ok(())
}

/// The target's side (`rvm-testkit stall-target`).
pub fn target_main(kind: Kind) -> Result<()> {
    // Any process of the same user may read this one's /proc/PID/mem (Yama's
    // ptrace_scope 1 allows only ancestors otherwise); EINVAL without Yama.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0) };
    match kind {
        Kind::Munlock { region_mb } => single(move || Munlock::new(region_mb, false)),
        Kind::Mlock { region_mb } => single(move || Munlock::new(region_mb, true)),
        Kind::Merge { hold_ms } => single(move || Merge::new(Duration::from_millis(hold_ms))),
        Kind::Readers { hold_ms } => readers_main(move || Populate::new(Duration::from_millis(hold_ms)), WRITER_DELAY),
        Kind::Unmap { region_mb } => readers_main(move || Unmap::new(region_mb), UNMAP_WRITER_DELAY),
    }
    .inspect_err(|e| {
        let _ = say(&format!("error {e:#}"));
    })
}

/// The munlock and merge kinds: the holding happens on a thread of its own, so
/// its tid differs from the process's pid and its comm is [`HOLDER_COMM`]; that
/// thread reads the commands.
fn single<H: Holder, F: FnOnce() -> Result<H> + Send + 'static>(new: F) -> Result<()> {
    std::thread::Builder::new()
        .name(HOLDER_COMM.into())
        .spawn(move || -> Result<()> {
            let mut holder = new()?;
            // SAFETY: gettid has no preconditions.
            say(&format!("ready {}", unsafe { libc::gettid() }))?;
            serve(&mut holder, std::io::stdin().lock().lines().map(|l| l.map_err(Into::into)), None)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the holder thread panicked"))?
}

/// The munlock kind: a write hold as long as `munlock()` of an mlocked,
/// populated region takes; with `lock`, the mlock kind: as long as `mlock()`
/// of the same region, populated and not locked, takes.
struct Munlock {
    region: Mapping,
    locked: bool,
    lock: bool,
}

impl Munlock {
    fn new(region_mb: usize, lock: bool) -> Result<Munlock> {
        let len = region_mb << 20;
        let region = Mapping::new(len, libc::PROT_READ | libc::PROT_WRITE, 0).with_context(|| format!("map {region_mb} MiB"))?;
        for off in (0..len).step_by(PAGE) {
            // SAFETY: inside the writable mapping; 4 KiB pages so there is a
            // page table entry per page.
            unsafe { std::ptr::write_volatile(region.addr.add(off), 1) };
        }
        let mut m = Munlock { region, locked: false, lock };
        m.prepare().with_context(|| format!("prepare {region_mb} MiB"))?;
        Ok(m)
    }

    /// Locks with `mlock()` to make a munlock hold, with `mlock2(MLOCK_ONFAULT)`
    /// as the mlock hold itself: plain `mlock()` drops the write lock before
    /// its populate step (`__mm_populate()`, under the read lock, which a
    /// reader shares), so only part of the call would be a write hold; with
    /// MLOCK_ONFAULT that step faults nothing in, and the call is the
    /// write-locked walk that marks the (present) pages mlocked.
    fn set_locked(&mut self, locked: bool) -> Result<()> {
        let (addr, len) = (self.region.addr.cast::<libc::c_void>(), self.region.len);
        // SAFETY: our own mapping.
        let r = unsafe {
            match (locked, self.lock) {
                (true, true) => libc::mlock2(addr, len, libc::MLOCK_ONFAULT),
                (true, false) => libc::mlock(addr, len),
                (false, _) => libc::munlock(addr, len),
            }
        };
        if r != 0 {
            return Err(errno(if locked { "mlock" } else { "munlock" }));
        }
        self.locked = locked;
        Ok(())
    }
}

impl Holder for Munlock {
    fn range(&self) -> Option<(usize, usize)> {
        Some((self.region.addr as usize, self.region.len))
    }

    fn prepare(&mut self) -> Result<()> {
        // Locked before a munlock hold, unlocked before an mlock hold.
        if self.locked == self.lock { self.set_locked(!self.lock) } else { Ok(()) }
    }

    fn hold(&mut self) -> Result<()> {
        self.set_locked(self.lock)
    }

    fn held(&mut self, _took: Duration) {}
}

/// The merge kind: a write hold as long as one `mprotect()` takes to merge
/// `vmas` alternating VMAs of `pages` pages each.
///
/// The region is mapped anonymous read-write (`MAP_NORESERVE`, so no commit
/// charge even when made writable again; `MADV_NOHUGEPAGE`) and populated
/// read-only with `MADV_POPULATE_READ`: every page table entry then maps the
/// shared zero page (no RAM), and each merge also rewrites the entries of the
/// pages it makes writable (a few % slower for single-page VMAs, and what
/// makes multi-page VMAs cost more). Every other VMA is made `PROT_READ`
/// (alternating protections cannot merge); the hold is
/// `mprotect(whole region, PROT_READ | PROT_WRITE)`.
///
/// mm/mprotect.c `do_mprotect_pkey()` (read in v6.18, long unchanged) takes
/// `mmap_write_lock_killable()` once, runs `mprotect_fixup()` (merge via
/// `vma_modify_flags()`, then `change_protection()`) for each VMA of the range
/// and unlocks only at the end; the `cond_resched()`s inside do not drop it.
/// Natively a merge costs ~450–700 ns per VMA and writing the pages first
/// (real pages, anon_vma) only ~1.5× that for 4 KiB of RAM each: not used.
///
/// Sizing: a trial of [`Merge::TRIAL_VMAS`] gives ns per VMA, and
/// `vmas = hold × MARGIN / ns`. Each VMA costs the kernel ~250 bytes
/// (vm_area_struct, maple tree), so `vmas` is capped at RAM / 2 KiB, and by
/// `/proc/sys/vm/max_map_count`, which is raised when it is too low (root) —
/// else the VMAs get more pages each instead (page tables capped at RAM / 8;
/// a zero-page entry adds only ~10–20 ns natively, so the first holds come
/// out short and the layout grows over a few holds). A hold that came out short
/// scales the layout up for the next one. Splitting again after a hold is
/// `vmas / 2` `mprotect()` calls (~1.5 µs each natively), before `go`.
pub(crate) struct Merge {
    want: Duration,
    vmas: usize,
    pages: usize,
    region: Option<Mapping>,
    split: bool,
}

impl Merge {
    const TRIAL_VMAS: usize = 8192;

    pub(crate) fn new(want: Duration) -> Result<Merge> {
        let mut m = Merge { want, vmas: Self::TRIAL_VMAS, pages: 1, region: None, split: false };
        m.prepare().context("merge trial")?;
        let start = Instant::now();
        m.hold().context("merge trial")?;
        let took = start.elapsed();
        m.region = None;
        eprintln!("stall-target: merge: trial {} VMAs in {:.1} ms ({} ns/VMA)", m.vmas, took.as_secs_f64() * 1e3, took.as_nanos() / m.vmas as u128);
        m.scale(took);
        Ok(m)
    }

    /// Sizes the layout for `want` from a hold of the current one that took `took`.
    fn scale(&mut self, took: Duration) {
        let factor = self.want.as_secs_f64() * MARGIN / took.as_secs_f64().max(1e-6);
        let wanted = (self.vmas as f64 * factor).ceil() as usize;
        let cap = (phys_bytes() / 2048).min(map_count_room(wanted));
        let (vmas, pages) = if wanted <= cap {
            (wanted, self.pages)
        } else {
            // Too many VMAs: fewer, with more zero-page entries each (cost
            // grows more slowly than pages, so this may take a few holds).
            (cap, (self.pages as f64 * wanted as f64 / cap as f64).ceil() as usize)
        };
        // Page tables: 8 bytes a page, at most RAM / 8 in all.
        let pages = pages.min(phys_bytes() / 64 / vmas.max(1)).max(1);
        let vmas = vmas.max(2) & !1;
        if (vmas, pages) != (self.vmas, self.pages) || self.region.is_none() {
            eprintln!("stall-target: merge: {vmas} VMAs of {pages} page(s) for a {} ms hold", self.want.as_millis());
            self.vmas = vmas;
            self.pages = pages;
            self.region = None;
        }
    }
}

impl Holder for Merge {
    fn range(&self) -> Option<(usize, usize)> {
        self.region.as_ref().map(|r| (r.addr as usize, self.vmas * self.pages * PAGE))
    }

    fn prepare(&mut self) -> Result<()> {
        let region = match &self.region {
            Some(region) => region,
            None => {
                let len = self.vmas * self.pages * PAGE;
                let region = Mapping::new(len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_NORESERVE).with_context(|| format!("map {} MiB", len >> 20))?;
                region.populate_read()?;
                self.split = false;
                self.region.insert(region)
            }
        };
        if !self.split {
            for vma in (1..self.vmas).step_by(2) {
                region.mprotect(vma * self.pages, self.pages, libc::PROT_READ).with_context(|| format!("split VMA {vma} of {} (max_map_count?)", self.vmas))?;
            }
            self.split = true;
        }
        Ok(())
    }

    fn hold(&mut self) -> Result<()> {
        let region = self.region.as_ref().context("no region")?;
        self.split = false;
        region.mprotect(0, self.vmas * self.pages, libc::PROT_READ | libc::PROT_WRITE).context("merge")
    }

    fn held(&mut self, took: Duration) {
        if took < self.want {
            self.scale(took);
        }
    }
}

/// How many VMAs this process may add under `max_map_count`, raising it
/// (root only) if `wanted` do not fit. Never lowers it.
fn map_count_room(wanted: usize) -> usize {
    const KNOB: &str = "/proc/sys/vm/max_map_count";
    let read = || std::fs::read_to_string(KNOB).ok().and_then(|s| s.trim().parse::<usize>().ok()).unwrap_or(65530);
    let used = std::fs::read_to_string("/proc/self/maps").map(|s| s.lines().count()).unwrap_or(1000);
    let need = used + wanted + MAP_HEADROOM;
    let mut max = read();
    if need > max {
        if let Err(e) = std::fs::write(KNOB, need.to_string()) {
            eprintln!("stall-target: cannot raise {KNOB} from {max} to {need}: {e}");
        }
        max = read();
    }
    max.saturating_sub(used + MAP_HEADROOM)
}

/// The readers kind's hold: `MADV_POPULATE_READ` over `pages` never-touched
/// pages of a fresh anonymous `PROT_READ` mapping (`MAP_NORESERVE`,
/// `MADV_NOHUGEPAGE`: no huge zero page). Read faults there map the shared
/// zero page: no RAM, only page tables (8 bytes a page, capped at RAM / 8).
/// `PROT_READ` private mappings carry no commit charge at all. A fresh
/// mapping for each hold (the old one is unmapped before `go`).
///
/// Why the read lock is held for the whole range (mm/madvise.c, mm/gup.c as
/// of v6.18; the structure dates from the v6.9 rework of MADV_POPULATE_*, so
/// v6.12 is the same; verified natively on 6.18 by the test below):
///
/// - `madvise()` takes `mmap_read_lock_killable()` for `MADV_POPULATE_READ`
///   (`madvise_need_mmap_write()` is 0 for it in v6.12; `get_lock_mode()` is
///   `MADVISE_MMAP_READ_LOCK` in v6.18, which uses per-VMA locks only for
///   `MADV_DONTNEED`/`MADV_FREE`-like advice);
/// - `madvise_populate()` loops `faultin_page_range()` →
///   `__get_user_pages_locked(FOLL_UNLOCKABLE | FOLL_MADV_POPULATE)` over the
///   whole range. The lock is dropped only when a fault returns
///   `VM_FAULT_RETRY` (then `*locked = 0` and `madvise_populate()` takes it
///   again). A read fault on never-touched private anonymous memory
///   (`do_anonymous_page()`) maps the zero page and never retries — retries
///   come from file pages (I/O, folio lock) or userfaultfd, neither here. The
///   per-page loop only calls `cond_resched()`, which keeps the lock. A fatal
///   signal ends it with `-EINTR`.
///
/// Natively ~117 ns a page: a 2.5 s hold is ~27M pages (100 GiB of address
/// space, 200 MiB of page tables); under TCG 10–50× fewer.
struct Populate {
    want: Duration,
    pages: usize,
    region: Option<Mapping>,
}

impl Populate {
    const TRIAL_PAGES: usize = 16384;

    fn new(want: Duration) -> Result<Populate> {
        let mut p = Populate { want, pages: Self::TRIAL_PAGES, region: None };
        // Twice: under TCG the first run also translates the kernel's
        // populate path, which made it twice as slow per page as the holds
        // it scaled (a 3 s hold came out at 1.9 s on 2026-12-06).
        let mut took = Duration::ZERO;
        for _ in 0..2 {
            p.prepare().context("populate trial")?;
            let start = Instant::now();
            p.hold().context("populate trial")?;
            took = start.elapsed();
        }
        eprintln!("stall-target: populate: trial {} pages in {:.1} ms ({} ns/page)", p.pages, took.as_secs_f64() * 1e3, took.as_nanos() / p.pages as u128);
        p.scale(took);
        Ok(p)
    }

    fn scale(&mut self, took: Duration) {
        let factor = self.want.as_secs_f64() * MARGIN / took.as_secs_f64().max(1e-6);
        let cap = phys_bytes() / 64;
        let pages = ((self.pages as f64 * factor).ceil() as usize).min(cap);
        eprintln!("stall-target: populate: {pages} pages ({} MiB) for a {} ms hold", (pages * PAGE) >> 20, self.want.as_millis());
        self.pages = pages;
    }
}

impl Holder for Populate {
    fn prepare(&mut self) -> Result<()> {
        self.region = None;
        let len = self.pages * PAGE;
        self.region = Some(Mapping::new(len, libc::PROT_READ, libc::MAP_NORESERVE).with_context(|| format!("map {} MiB", len >> 20))?);
        Ok(())
    }

    fn hold(&mut self) -> Result<()> {
        self.region.as_ref().context("no region")?.populate_read()
    }

    fn held(&mut self, took: Duration) {
        if took < self.want {
            self.scale(took);
        }
    }
}

/// The unmap kind's hold: `munmap()` of a populated region, mapped and
/// filled again before each hold.
struct Unmap {
    len: usize,
    region: Option<Mapping>,
}

impl Unmap {
    fn new(region_mb: usize) -> Result<Unmap> {
        let mut u = Unmap { len: region_mb << 20, region: None };
        u.prepare().with_context(|| format!("map and fill {region_mb} MiB"))?;
        Ok(u)
    }
}

impl Holder for Unmap {
    fn range(&self) -> Option<(usize, usize)> {
        self.region.as_ref().map(|m| (m.addr as usize, m.len))
    }

    fn prepare(&mut self) -> Result<()> {
        if self.region.is_none() {
            let m = Mapping::new(self.len, libc::PROT_READ | libc::PROT_WRITE, 0)?;
            for off in (0..self.len).step_by(PAGE) {
                // SAFETY: inside the writable mapping: a page each.
                unsafe { std::ptr::write_volatile(m.addr.add(off), 1) };
            }
            self.region = Some(m);
        }
        Ok(())
    }

    fn hold(&mut self) -> Result<()> {
        let m = self.region.take().context("no region")?;
        // SAFETY: our own mapping, unmapped here instead of on drop.
        let r = unsafe { libc::munmap(m.addr.cast(), m.len) };
        std::mem::forget(m);
        if r != 0 {
            return Err(errno("munmap"));
        }
        Ok(())
    }

    fn held(&mut self, _took: Duration) {}
}

/// The readers kind: the main thread reads the commands and hands `hold` to
/// the read holder, `write` to the writer.
fn readers_main<H: Holder + 'static>(new: impl FnOnce() -> Result<H> + Send + 'static, writer_delay: Duration) -> Result<()> {
    let since: Since = Arc::default();
    // Each thread reports (is it the read holder, its tid) once set up.
    let (tids_tx, tids_rx) = mpsc::channel::<Result<(bool, i32)>>();
    let (hold_tx, hold_rx) = mpsc::channel::<String>();
    let (write_tx, write_rx) = mpsc::channel::<String>();

    let (tx, holder_since) = (tids_tx.clone(), since.clone());
    let holder = std::thread::Builder::new().name(READ_HOLDER_COMM.into()).spawn(move || {
        let mut holder = match new() {
            Ok(h) => h,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        // SAFETY: gettid has no preconditions.
        let _ = tx.send(Ok((true, unsafe { libc::gettid() })));
        drop(tx);
        fatal(serve(&mut holder, hold_rx.into_iter().map(Ok), Some(&holder_since)).err())
    })?;
    let writer = std::thread::Builder::new().name(WRITE_WAITER_COMM.into()).spawn(move || {
        let page = match Mapping::new(PAGE, libc::PROT_READ | libc::PROT_WRITE, 0) {
            Ok(p) => p,
            Err(e) => {
                let _ = tids_tx.send(Err(e));
                return;
            }
        };
        // SAFETY: gettid has no preconditions.
        let _ = tids_tx.send(Ok((false, unsafe { libc::gettid() })));
        drop(tids_tx);
        fatal(write_loop(&page, write_rx, &since, writer_delay).err())
    })?;

    let (mut holder_tid, mut writer_tid) = (0, 0);
    for _ in 0..2 {
        match tids_rx.recv().context("a thread ended before ready")?? {
            (true, tid) => holder_tid = tid,
            (false, tid) => writer_tid = tid,
        }
    }
    say(&format!("ready {holder_tid} {writer_tid}"))?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let to = match line.as_str() {
            "hold" => &hold_tx,
            l if l == "write" || l.starts_with("write ") => &write_tx,
            _ => continue,
        };
        to.send(line).context("a thread ended")?;
    }
    drop((hold_tx, write_tx));
    for t in [holder, writer] {
        t.join().map_err(|_| anyhow::anyhow!("a thread panicked"))?;
    }
    Ok(())
}

/// Ends the whole target on a thread's error, saying so on stdout.
fn fatal(error: Option<anyhow::Error>) {
    if let Some(e) = error {
        let _ = say(&format!("error {e:#}"));
        eprintln!("stall-target: {e:#}");
        std::process::exit(1);
    }
}

/// The writer: for each `write`, once the read hold has gone on for
/// `delay` ([`WRITER_DELAY`], [`UNMAP_WRITER_DELAY`]; `write MS`: MS ms), `wgo`, one `mprotect()` of its own page (it queues behind
/// the read hold), `waited NS END`.
fn write_loop(page: &Mapping, commands: mpsc::Receiver<String>, since: &Since, delay: Duration) -> Result<()> {
    let mut prot = libc::PROT_READ;
    for command in commands {
        // `write MS`: that delay instead of the kind's.
        let delay = command.strip_prefix("write ").and_then(|ms| ms.parse().ok()).map_or(delay, Duration::from_millis);
        let started = *since.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let Some(started) = started else {
            say("error write: the read holder is not holding")?;
            continue;
        };
        std::thread::sleep(delay.saturating_sub(started.elapsed()));
        say(&format!("wgo {:#x} {PAGE}", page.addr as usize))?;
        let start = Instant::now();
        page.mprotect(0, 1, prot)?;
        let took = start.elapsed();
        let end = monotonic_ns();
        say(&format!("waited {} {end}", took.as_nanos()))?;
        prot ^= libc::PROT_WRITE;
    }
    Ok(())
}

/// One timed syscall of the target, as it reported it.
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    /// How long it took, by the target's clock (ns).
    pub ns: u64,
    /// When it returned, `CLOCK_MONOTONIC` (ns; see [`monotonic_ns`]).
    pub end_ns: u64,
}

impl Timed {
    fn parse(line: &str, prefix: &str) -> Result<Timed> {
        let parsed = line.strip_prefix(prefix).and_then(|rest| {
            let mut fields = rest.split_whitespace().map(|f| f.parse::<u64>().ok());
            Some(Timed { ns: fields.next()??, end_ns: fields.next().flatten().unwrap_or(0) })
        });
        parsed.with_context(|| format!("stall-target said {line:?}"))
    }
}

/// The readers kind: one read hold with a writer queued behind it.
#[derive(Clone, Copy, Debug)]
pub struct Queued {
    /// The read holder's `madvise()`.
    pub holder: Timed,
    /// The writer's `mprotect()`: it started [`WRITER_DELAY`] or more into the
    /// hold and ended after it.
    pub writer: Timed,
}

/// The test's side: a running target.
pub struct StallTarget {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    kind: Kind,
    writer_started: bool,
    /// The holder thread (not the target's main thread): comm [`HOLDER_COMM`],
    /// or [`READ_HOLDER_COMM`] for the readers kind.
    pub tid: i32,
    /// The readers kind: the writer thread (comm [`WRITE_WAITER_COMM`]).
    pub writer_tid: Option<i32>,
    /// During a write hold: an address in a VMA the hold write-locks
    /// (`go ADDR LEN`), for reads that must not take the lockless path.
    pub inside: Option<u64>,
    /// During a write hold: the range its system call was passed
    /// (address, length).
    pub range: Option<(u64, u64)>,
    /// The readers kind's writer, once started: the range its `mprotect()`
    /// was passed.
    pub writer_range: Option<(u64, u64)>,
}

/// `0xADDR LEN` as a target says it.
fn parse_range(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split_whitespace();
    let addr = u64::from_str_radix(words.next()?.strip_prefix("0x")?, 16).ok()?;
    Some((addr, words.next()?.parse().ok()?))
}

impl StallTarget {
    /// A munlock target of a `region_mb` MiB region (this executable's
    /// `stall-target` subcommand).
    pub fn spawn(region_mb: usize) -> Result<StallTarget> {
        Self::spawn_kind(Kind::Munlock { region_mb })
    }

    /// A merge target: write holds of at least `hold_ms` (calibrated before
    /// `ready`, which may take a while under emulation).
    pub fn spawn_merge(hold_ms: u64) -> Result<StallTarget> {
        Self::spawn_kind(Kind::Merge { hold_ms })
    }

    /// A readers target: read holds of at least `hold_ms`, and a writer.
    pub fn spawn_readers(hold_ms: u64) -> Result<StallTarget> {
        Self::spawn_kind(Kind::Readers { hold_ms })
    }

    /// A target of any kind, run by this executable.
    pub fn spawn_kind(kind: Kind) -> Result<StallTarget> {
        Self::spawn_with(&std::env::current_exe()?, kind)
    }

    /// A target of any kind, run by `exe` (an `rvm-testkit` binary).
    pub fn spawn_with(exe: &Path, kind: Kind) -> Result<StallTarget> {
        Self::spawn_as(exe, kind, None)
    }

    /// A target of any kind, run by `exe` as `user` (uid, gid; from root),
    /// or as this process's user.
    pub fn spawn_as(exe: &Path, kind: Kind, user: Option<(u32, u32)>) -> Result<StallTarget> {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(exe);
        command.args(kind.args()).stdin(Stdio::piped()).stdout(Stdio::piped());
        if let Some((uid, gid)) = user {
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn().with_context(|| format!("spawn {} stall-target", exe.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut t = StallTarget { child, stdin, stdout, kind, writer_started: false, tid: 0, writer_tid: None, inside: None, range: None, writer_range: None };
        let line = t.line()?;
        let tids: Option<Vec<i32>> = line.strip_prefix("ready ").map(|v| v.split_whitespace().filter_map(|t| t.parse().ok()).collect());
        match (tids.as_deref(), kind) {
            (Some(&[a, b]), Kind::Readers { .. } | Kind::Unmap { .. }) => (t.tid, t.writer_tid) = (a, Some(b)),
            (Some(&[tid]), Kind::Munlock { .. } | Kind::Mlock { .. } | Kind::Merge { .. }) => t.tid = tid,
            _ => bail!("stall-target said {line:?}"),
        }
        Ok(t)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("stall-target exited");
        }
        Ok(line.trim().to_string())
    }

    /// Starts one hold; returns once the holder is about to enter it (after
    /// the preparation, which for the merge kind is seconds natively).
    pub fn start_hold(&mut self) -> Result<()> {
        self.range = self.go("hold", "go")?;
        self.inside = self.range.map(|(addr, _)| addr);
        Ok(())
    }

    /// Sends `command`; the range of the target's `answer ADDR LEN`.
    fn go(&mut self, command: &str, answer: &str) -> Result<Option<(u64, u64)>> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let line = self.line()?;
        let Some(rest) = line.strip_prefix(answer) else {
            bail!("stall-target said {line:?}");
        };
        Ok(parse_range(rest))
    }

    /// Waits for the hold to end: how long it was, by the holder's clock (ns).
    /// With a writer started (readers kind), waits for it too; see
    /// [`end_queued`](Self::end_queued) for both figures.
    pub fn end_hold(&mut self) -> Result<u64> {
        if self.writer_started {
            return Ok(self.end_queued()?.holder.ns);
        }
        Ok(self.end_hold_timed()?.ns)
    }

    /// [`end_hold`](Self::end_hold), with when the hold ended.
    pub fn end_hold_timed(&mut self) -> Result<Timed> {
        anyhow::ensure!(!self.writer_started, "a writer was started: use end_queued");
        let line = self.line()?;
        Timed::parse(&line, "held ")
    }

    /// One hold with nothing else going on.
    pub fn hold(&mut self) -> Result<u64> {
        self.start_hold()?;
        self.end_hold()
    }

    /// The readers kind, during a hold: starts the writer's `mprotect()`;
    /// returns once it is about to enter it (at least [`WRITER_DELAY`] into
    /// the hold). It is queued microseconds later: a reader that must queue
    /// behind it should start after [`wait_writer_queued`](Self::wait_writer_queued).
    pub fn start_writer(&mut self) -> Result<()> {
        self.start_writer_command("write")
    }

    /// [`start_writer`](Self::start_writer), the writer starting `delay`
    /// into the hold instead of the kind's delay (a holder slowed down enters
    /// its system call late).
    pub fn start_writer_after(&mut self, delay: Duration) -> Result<()> {
        self.start_writer_command(&format!("write {}", delay.as_millis()))
    }

    fn start_writer_command(&mut self, command: &str) -> Result<()> {
        anyhow::ensure!(matches!(self.kind, Kind::Readers { .. } | Kind::Unmap { .. }), "only the readers and unmap kinds have a writer");
        self.writer_range = self.go(command, "wgo")?;
        self.writer_started = true;
        Ok(())
    }

    /// Waits (polling every ms, up to `timeout`) until the writer sleeps in
    /// the kernel (state `D` in `/proc/PID/task/TID/stat`: `TASK_KILLABLE` in
    /// `rwsem_down_write_slowpath()`, queued). Reading `stat` takes no
    /// mmap_lock. Returns how long it waited.
    pub fn wait_writer_queued(&self, timeout: Duration) -> Result<Duration> {
        let tid = self.writer_tid.context("only the readers kind has a writer")?;
        let path = format!("/proc/{}/task/{tid}/stat", self.pid());
        let start = Instant::now();
        loop {
            let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            if state == Some('D') {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("the writer is not queued after {timeout:?} (state {state:?})");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The readers kind, after [`start_writer`](Self::start_writer): waits
    /// for the hold and the writer's `mprotect()` to end.
    pub fn end_queued(&mut self) -> Result<Queued> {
        anyhow::ensure!(self.writer_started, "no writer was started");
        self.writer_started = false;
        let (mut holder, mut writer) = (None, None);
        while holder.is_none() || writer.is_none() {
            let line = self.line()?;
            if line.starts_with("held ") && holder.is_none() {
                holder = Some(Timed::parse(&line, "held ")?);
            } else if line.starts_with("waited ") && writer.is_none() {
                writer = Some(Timed::parse(&line, "waited ")?);
            } else {
                bail!("stall-target said {line:?}");
            }
        }
        Ok(Queued { holder: holder.context("held")?, writer: writer.context("waited")? })
    }

    /// One `read()` of the target's `/proc/PID/cmdline` (two remote accesses:
    /// a 1-byte probe, then the whole argv); returns the time it took (ns).
    pub fn read_cmdline(&self) -> Result<u64> {
        read_cmdline(self.pid())
    }
}

/// [`StallTarget::read_cmdline`] of any process (usable from another thread).
pub fn read_cmdline(pid: u32) -> Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(format!("/proc/{pid}/cmdline"))?;
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let n = file.read(&mut buf)?;
    let took = start.elapsed().as_nanos() as u64;
    if n == 0 {
        bail!("empty cmdline");
    }
    Ok(took)
}

impl Drop for StallTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
