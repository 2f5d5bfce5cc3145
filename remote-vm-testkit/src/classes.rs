//! The classification workload: a known number of remote accesses of each kind,
//! and the exact metric deltas each kernel must show for them.
//!
//! The model follows the kernel code (6.12 and 7.3 with and without the
//! series, v1 and v2):
//! - patched reads first run the lockless loop: `lock_vma_under_rcu` per VMA
//!   (v2: one per call, and a request past that VMA's end goes to the old path
//!   whole, before any walk), the VMA-flags check (v2 also refuses FOLL_ANON on
//!   a VMA that is not anonymous), `folio_walk_start` per mapping entry;
//!   whatever is left takes `mmap_read_lock_killable`, `vma_lookup`/`expand_stack`
//!   (write lock) and GUP, one `get_user_pages_remote` per page; where the old
//!   path stops at a hole, v1 returns 0 (the lockless bytes are discarded), v2
//!   the bytes copied so far (and `/proc/PID/mem` asks again for the rest);
//! - unpatched reads, and all writes, take only that old path;
//! - `/proc/PID/mem` asks again for the rest when a call returns short.
use anyhow::{Result, bail};
use remote_vm_common::{
    Point,
    catalog::{
        CONTEXT_REMOTE, FALLBACK_LOCKLESS_BYTES, FALLBACKS, FOLIO_WALKS, FOLL_ANON_FILE_BACKED, GUP_CALLS,
        LOCK_READ, LOCK_VMA_CALLS, LOCK_VMA_FAILURES, LOCK_WRITE, LOCKLESS_BYTES_DISCARDED,
        LOCKLESS_DISCARDED_READS, LOCKLESS_PTE_PAGES, MMAP_LOCK_ACQUIRE_FAILURES, MMAP_LOCK_HOLD, MMAP_LOCK_WAIT, STALLS,
        MULTI_VMA_READS, Metric, PROBE_HITS, PROBE_MISSES, READ_BYTES, READ_DURATION, READ_VMAS, READS,
        UNTRACKED_CALLS, WRITE_DURATION, WRITES, WRITTEN_BYTES,
    },
    classify::{Level, Path, Reason},
    series::Series,
};

use crate::workload::{CMDLINE, PAGE, Target, pattern};

/// How many accesses of each kind one run makes.
#[derive(Clone, Copy, Debug)]
pub struct Counts {
    /// A resident, PTE-mapped page.
    pub resident: u64,
    /// 4 KiB from the middle of a read-write page into the next, read-only VMA.
    pub straddle: u64,
    /// A never-written anonymous page (the zero page).
    pub zero: u64,
    /// A page of a hugetlb mapping (0 when none is reserved).
    pub hugetlb: u64,
    /// 4 KiB from the middle of a hugetlb mapping's last page into the next,
    /// ordinary VMA: a VMA both unsuitable and crossed (0 when none is reserved).
    pub hugetlb_straddle: u64,
    /// An unmapped address.
    pub unmapped: u64,
    /// 4 KiB from the middle of a resident page into an unmapped hole.
    pub hole_straddle: u64,
    /// 16-byte writes to a resident page.
    pub writes: u64,
    /// A page of a PMD-mapped transparent huge page (0 when none was given).
    pub thp: u64,
    /// `read()`s of `/proc/PID/cmdline` whose argv lives in a file mapping (two
    /// FOLL_ANON calls each; 0 when argv could not be moved).
    pub cmdline: u64,
}

pub const COUNTS: Counts = Counts {
    resident: 16,
    straddle: 5,
    zero: 7,
    hugetlb: 3,
    hugetlb_straddle: 2,
    unmapped: 4,
    hole_straddle: 2,
    writes: 6,
    thp: 3,
    cmdline: 2,
};

impl Counts {
    /// `COUNTS` less what this target could not set up (no hugetlb page
    /// reserved, no THP given, argv not moved).
    pub fn for_layout(l: &crate::workload::Layout) -> Counts {
        let mut c = COUNTS;
        if l.hugetlb.is_none() {
            c.hugetlb = 0;
        }
        if l.hugetlb_straddle.is_none() {
            c.hugetlb_straddle = 0;
        }
        if l.thp.is_none() {
            c.thp = 0;
        }
        if l.cmdline_len == 0 {
            c.cmdline = 0;
        }
        c
    }
}

const B: u64 = PAGE as u64;
const HALF: u64 = B / 2;
const WRITE_LEN: usize = 16;

/// What the workload itself saw: calls it made and bytes it got back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ground {
    pub reads_ok: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Bytes `/proc/PID/cmdline` gave back, over all its reads.
    pub cmdline_bytes: u64,
}

/// Makes the accesses of `c` against `t`, checking the data it gets back.
pub fn run(t: &Target, c: &Counts) -> Result<Ground> {
    let l = &t.layout;
    let mut g = Ground::default();
    let mut read = |addr: u64, len: usize, want: Option<u8>| -> Result<()> {
        match t.pread(addr, len) {
            Ok(data) => {
                if let Some(b) = want {
                    if data.iter().any(|x| *x != b) {
                        bail!("read at {addr:#x}: unexpected bytes");
                    }
                }
                g.reads_ok += 1;
                g.bytes_read += data.len() as u64;
                Ok(())
            }
            // EIO: the call returned 0 bytes.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(()),
            Err(e) => bail!("pread {addr:#x}: {e}"),
        }
    };
    for i in 0..c.resident as usize {
        let page = i % l.resident_pages;
        read(l.resident + (page * PAGE) as u64, PAGE, Some(pattern(page)))?;
    }
    for _ in 0..c.straddle {
        read(l.straddle + HALF, PAGE, Some(0x5b))?;
    }
    if c.zero as usize > l.zero_pages {
        bail!("not enough zero pages");
    }
    for i in 0..c.zero as usize {
        read(l.zero + (i * PAGE) as u64, PAGE, Some(0))?;
    }
    if c.hugetlb > 0 {
        let Some(h) = l.hugetlb else { bail!("no hugetlb page in the target") };
        for i in 0..c.hugetlb as usize {
            read(h + (i * PAGE) as u64, PAGE, Some(if i == 0 { 0x6c } else { 0 }))?;
        }
    }
    if c.hugetlb_straddle > 0 {
        let Some(at) = l.hugetlb_straddle else { bail!("no hugetlb straddle in the target") };
        for _ in 0..c.hugetlb_straddle {
            read(at, PAGE, Some(crate::workload::HUGETLB_STRADDLE_BYTE))?;
        }
    }
    for _ in 0..c.unmapped {
        read(l.hole, PAGE, None)?;
    }
    for _ in 0..c.hole_straddle {
        read(l.hole - HALF, PAGE, Some(0x7d))?;
    }
    if c.thp > 0 {
        let Some(thp) = l.thp else { bail!("no THP in the target") };
        for i in 0..c.thp as usize {
            read(thp + (i * PAGE) as u64, PAGE, Some(0x8e))?;
        }
    }
    for _ in 0..c.cmdline {
        let got = t.read_cmdline().map_err(|e| anyhow::anyhow!("read cmdline: {e}"))?;
        if !got.is_empty() && got != CMDLINE {
            bail!("cmdline read back {got:?}");
        }
        g.cmdline_bytes += got.len() as u64;
    }
    for i in 0..c.writes as usize {
        let page = i % l.resident_pages;
        let n = t
            .pwrite(l.resident + (page * PAGE) as u64, &[pattern(page); WRITE_LEN])
            .map_err(|e| anyhow::anyhow!("pwrite: {e}"))?;
        g.bytes_written += n as u64;
    }
    Ok(g)
}

/// The version of the series a patched kernel carries, as its kernel list
/// records it (never inferred from a name or from the daemon's output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// What `remote_vm_kernel_info`'s `series` must say.
    pub fn series(self) -> Series {
        match self {
            Version::V1 => Series::V1,
            Version::V2 => Series::V2,
        }
    }
}

/// The kernel under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The lockless read path is there, as this version of the series.
    Patched(Version),
    /// It is not: every read takes the mmap_lock.
    Unpatched,
    /// Not even its functions (no per-VMA locks, no `lock_vma_under_rcu`, no
    /// `folio_walk_start`; `FOLL_*` are #defines, not in BTF): Linux 6.1. Reads
    /// count as on an unpatched kernel; the lockless families are absent.
    Legacy,
}

impl Kernel {
    /// `rvm.expect=`: `patched-v1`, `patched-v2`, `unpatched` or `legacy`
    /// (`unknown` and anything else: no ground truth).
    pub fn from_expect(s: &str) -> Option<Kernel> {
        use remote_vm_common::series::Expectation;
        match Expectation::parse(s)? {
            Expectation::PatchedV1 => Some(Kernel::Patched(Version::V1)),
            Expectation::PatchedV2 => Some(Kernel::Patched(Version::V2)),
            Expectation::Unpatched => Some(Kernel::Unpatched),
            Expectation::Legacy => Some(Kernel::Legacy),
            Expectation::Unknown => None,
        }
    }

    pub fn is_patched(self) -> bool {
        matches!(self, Kernel::Patched(_))
    }

    /// What `remote_vm_kernel_info`'s `series` must say.
    pub fn series(self) -> Series {
        match self {
            Kernel::Patched(v) => v.series(),
            Kernel::Unpatched | Kernel::Legacy => Series::None,
        }
    }

    pub fn has_lockless_functions(self) -> bool {
        self != Kernel::Legacy
    }
}

/// Metric families a legacy kernel cannot have: their probes or BTF facts do not exist.
const ABSENT_ON_LEGACY: &[&str] = &[
    LOCK_VMA_CALLS.name,
    LOCK_VMA_FAILURES.name,
    FOLIO_WALKS.name,
    LOCKLESS_PTE_PAGES.name,
    FOLL_ANON_FILE_BACKED.name,
];

/// `$metric.name` followed by the literal `$suffix`, as a `&'static str` constant.
macro_rules! sample {
    ($metric:expr, $suffix:literal) => {{
        const METRIC: Metric = $metric;
        const LEN: usize = METRIC.name.len() + $suffix.len();
        const BYTES: [u8; LEN] = concat_bytes(METRIC.name, $suffix);
        const NAME: &str = match std::str::from_utf8(&BYTES) {
            Ok(name) => name,
            Err(_) => panic!("not UTF-8"),
        };
        NAME
    }};
}

const fn concat_bytes<const N: usize>(a: &str, b: &str) -> [u8; N] {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    assert!(a.len() + b.len() == N);
    let mut out = [0; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - a.len()];
        i += 1;
    }
    out
}

/// The histogram sample lines expected below, as `&'static str`: the names
/// `Metric::sample` gives as a `String`, joined at compile time.
const READ_DURATION_COUNT: &str = sample!(READ_DURATION, "_count");
const READ_VMAS_COUNT: &str = sample!(READ_VMAS, "_count");
const READ_VMAS_SUM: &str = sample!(READ_VMAS, "_sum");
const WRITE_DURATION_COUNT: &str = sample!(WRITE_DURATION, "_count");
const MMAP_LOCK_WAIT_COUNT: &str = sample!(MMAP_LOCK_WAIT, "_count");
const MMAP_LOCK_HOLD_COUNT: &str = sample!(MMAP_LOCK_HOLD, "_count");

/// Label name/value pairs of one series.
pub type Labels = Vec<(&'static str, &'static str)>;

/// One expected delta: metric (with `_count`/`_sum` suffixes for histograms),
/// labels, value (`None`: the series must be absent).
pub type Expect = (&'static str, Labels, Option<u64>);

/// Remote-access calls the workload makes on `k`.
pub fn calls(k: Kernel, c: &Counts) -> u64 {
    let reads = c.resident + c.straddle + c.zero + c.hugetlb + c.hugetlb_straddle + c.unmapped + c.thp + 2 * c.cmdline;
    // Unpatched and v2: the hole straddle returns 2 KiB, and /proc/PID/mem
    // asks for the rest; v1 returns 0 for it.
    let hole = if k == Kernel::Patched(Version::V1) { c.hole_straddle } else { 2 * c.hole_straddle };
    reads + hole + c.writes
}

/// Every metric delta the workload must cause on `k`.
/// What the daemon must count on `k` for `c`; `vma_probed`: the opt-in
/// `lock_vma_under_rcu` family attached (else the VMA-level fallback reasons
/// are merged, and what only that probe sees is absent).
pub fn expected(k: Kernel, c: &Counts, vma_probed: bool) -> Vec<Expect> {
    // 6.1 has no lock_vma_under_rcu: a scenario that asks for it gets nothing there.
    let vma_probed = vma_probed && k != Kernel::Legacy;
    let as_unpatched = if k == Kernel::Legacy { Kernel::Unpatched } else { k };
    let fallback = |r: Reason| (FALLBACKS.name, vec![("reason", r.label())]);
    let mut values = expected_values(as_unpatched, c);
    // The merged reason: what the VMA-level reasons add up to.
    let [failed, unsuitable, crosses] = [Reason::VmaLockFailed, Reason::VmaUnsuitable, Reason::CrossesVmaEnd]
        .map(|r| values.iter().find(|(n, l, _)| (*n, l.clone()) == fallback(r)).map_or(0, |(_, _, v)| *v));
    let (n, l) = fallback(Reason::VmaLockFailedOrUnsuitable);
    values.push((n, l, failed + unsuitable + crosses));
    // Only the VMA step's probe sees these; where the kernel has no lockless
    // path they are exact without it.
    let vma_only = [READ_VMAS_COUNT, READ_VMAS_SUM, MULTI_VMA_READS.name];
    values
        .into_iter()
        .map(|(name, labels, v)| {
            if name == FALLBACKS.name {
                let reason = labels.iter().find(|(k, _)| *k == "reason").map(|(_, r)| *r);
                if Reason::ALL.iter().any(|r| Some(r.label()) == reason && !r.reported(vma_probed)) {
                    return (name, labels, None);
                }
            }
            if !vma_probed && (name == LOCK_VMA_CALLS.name || name == LOCK_VMA_FAILURES.name) {
                return (name, labels, None);
            }
            if !vma_probed && k != Kernel::Legacy && vma_only.contains(&name) {
                return (name, labels, None);
            }
            if k != Kernel::Legacy {
                return (name, labels, Some(v));
            }
            if ABSENT_ON_LEGACY.contains(&name) {
                return (name, labels, None);
            }
            // 6.1's __access_remote_vm stops at a hole inside its loop without
            // trying expand_stack (its backport only checks before the loop): the
            // first half of a hole straddle takes no write lock, the retry does.
            if name == MMAP_LOCK_WAIT_COUNT && labels.contains(&("mode", LOCK_WRITE)) {
                return (name, labels, Some(c.unmapped + c.hole_straddle));
            }
            (name, labels, Some(v))
        })
        .collect()
}

fn expected_values(k: Kernel, c: &Counts) -> Vec<(&'static str, Labels, u64)> {
    let Counts {
        resident: r,
        straddle: s,
        zero: z,
        hugetlb: h,
        hugetlb_straddle: hs,
        unmapped: m,
        hole_straddle: x,
        writes: w,
        thp: t,
        cmdline: cl,
    } = *c;
    // One cmdline read: a 1-byte probe and one call for the whole argv.
    let cl_calls = 2 * cl;
    let cl_bytes = cl * (1 + CMDLINE.len() as u64);
    let n = calls(k, c);
    let entry = ("probe", Point::AccessRemoteVmEntry.name());
    let exit = ("probe", Point::AccessRemoteVmExit.name());
    let remote = ("context", CONTEXT_REMOTE);
    let path = |p: Path| ("path", p.label());
    let reason = |r: Reason| ("reason", r.label());
    let level = |l: Level| ("level", l.label());
    let mut e: Vec<(&'static str, Labels, u64)> = vec![
        (PROBE_HITS.name, vec![entry], n),
        (PROBE_HITS.name, vec![exit], n),
        (PROBE_MISSES.name, vec![entry], 0),
        (PROBE_MISSES.name, vec![exit], 0),
        (UNTRACKED_CALLS.name, vec![], 0),
        (WRITES.name, vec![], w),
        (WRITTEN_BYTES.name, vec![], w * WRITE_LEN as u64),
        (WRITE_DURATION_COUNT, vec![], w),
        (MMAP_LOCK_ACQUIRE_FAILURES.name, vec![remote], 0),
        // Nothing holds the target's lock: no remote access waits long.
        (STALLS.name, vec![("lock_mode", LOCK_READ)], 0),
        (STALLS.name, vec![("lock_mode", LOCK_WRITE)], 0),
        (FALLBACKS.name, vec![reason(Reason::Other)], 0),
        (FOLIO_WALKS.name, vec![level(Level::Pud)], 0),
        (MULTI_VMA_READS.name, vec![path(Path::Slow)], 0),
        (MULTI_VMA_READS.name, vec![path(Path::Fallback)], 0),
    ];
    let paths = |fast: u64, fallback: u64, slow: u64| {
        [(Path::Fast, fast), (Path::Fallback, fallback), (Path::Slow, slow)]
    };
    match k {
        Kernel::Patched(Version::V1) => {
            // The hugetlb straddle: its first VMA refused and crossed, no walk.
            let fallback = z + h + hs + m + x;
            let fast = r + s + t + cl_calls;
            for (p, v) in paths(fast, fallback, 0) {
                e.push((READS.name, vec![path(p)], v));
                e.push((READ_DURATION_COUNT, vec![path(p)], v));
                e.push((READ_VMAS_COUNT, vec![path(p)], v));
            }
            for (p, v) in paths((r + s + t) * B + cl_bytes, (z + h + hs) * B, 0) {
                e.push((READ_BYTES.name, vec![path(p)], v));
            }
            // VMAs locked: one per read, two for the straddles (the hole never locks).
            for (p, v) in paths(r + 2 * s + t + cl_calls, z + h + hs + x, 0) {
                e.push((READ_VMAS_SUM, vec![path(p)], v));
            }
            e.extend([
                (MULTI_VMA_READS.name, vec![path(Path::Fast)], s),
                (FALLBACKS.name, vec![reason(Reason::VmaLockFailed)], m + x),
                (FALLBACKS.name, vec![reason(Reason::VmaUnsuitable)], h),
                (FALLBACKS.name, vec![reason(Reason::PageNotPresent)], z),
                (FALLBACK_LOCKLESS_BYTES.name, vec![], x * HALF),
                (LOCKLESS_BYTES_DISCARDED.name, vec![], x * HALF),
                (LOCKLESS_DISCARDED_READS.name, vec![], x),
                (MMAP_LOCK_WAIT_COUNT, vec![remote, ("mode", LOCK_READ)], fallback + w),
                (MMAP_LOCK_WAIT_COUNT, vec![remote, ("mode", LOCK_WRITE)], m + x),
                (MMAP_LOCK_HOLD_COUNT, vec![], fallback + w),
                (LOCK_VMA_CALLS.name, vec![remote], r + 2 * s + z + h + hs + m + 2 * x + t + cl_calls),
                (LOCK_VMA_FAILURES.name, vec![remote], m + x),
                (FOLIO_WALKS.name, vec![level(Level::Pte)], r + 2 * s + x + cl_calls),
                (FOLIO_WALKS.name, vec![level(Level::Pmd)], t),
                (LOCKLESS_PTE_PAGES.name, vec![], r + 2 * s + x + cl_calls),
                // The FOLL_ANON gap: both cmdline calls walk the file mapping lockless.
                (FOLL_ANON_FILE_BACKED.name, vec![], cl_calls),
                (GUP_CALLS.name, vec![path(Path::Fallback)], z + h + 2 * hs),
                (GUP_CALLS.name, vec![path(Path::Slow)], 0),
                // Only a crossing VMA that is also unsuitable says crossing on v1.
                (FALLBACKS.name, vec![reason(Reason::CrossesVmaEnd)], hs),
            ]);
        }
        Kernel::Patched(Version::V2) => {
            // One VMA per call: the straddles and the first call of each hole
            // straddle run past their VMA's end and go to the old path whole
            // (the hole straddle's second call starts in the hole); FOLL_ANON
            // on the file mapping is refused (as GUP refuses it: 0 bytes).
            let fallback = z + h + hs + m + s + 2 * x + cl_calls;
            let fast = r + t;
            for (p, v) in paths(fast, fallback, 0) {
                e.push((READS.name, vec![path(p)], v));
                e.push((READ_DURATION_COUNT, vec![path(p)], v));
                e.push((READ_VMAS_COUNT, vec![path(p)], v));
            }
            for (p, v) in paths((r + t) * B, (z + h + hs + s) * B + x * HALF, 0) {
                e.push((READ_BYTES.name, vec![path(p)], v));
            }
            // VMAs locked: one per call, none for a call that starts in a hole.
            for (p, v) in paths(r + t, z + h + hs + s + x + cl_calls, 0) {
                e.push((READ_VMAS_SUM, vec![path(p)], v));
            }
            e.extend([
                (MULTI_VMA_READS.name, vec![path(Path::Fast)], 0),
                (FALLBACKS.name, vec![reason(Reason::VmaLockFailed)], m + x),
                (FALLBACKS.name, vec![reason(Reason::VmaUnsuitable)], h + cl_calls),
                (FALLBACKS.name, vec![reason(Reason::CrossesVmaEnd)], s + x + hs),
                (FALLBACKS.name, vec![reason(Reason::PageNotPresent)], z),
                (FALLBACK_LOCKLESS_BYTES.name, vec![], 0),
                (LOCKLESS_BYTES_DISCARDED.name, vec![], 0),
                (LOCKLESS_DISCARDED_READS.name, vec![], 0),
                (MMAP_LOCK_WAIT_COUNT, vec![remote, ("mode", LOCK_READ)], fallback + w),
                (MMAP_LOCK_WAIT_COUNT, vec![remote, ("mode", LOCK_WRITE)], m + 2 * x),
                (MMAP_LOCK_HOLD_COUNT, vec![], fallback + w),
                (LOCK_VMA_CALLS.name, vec![remote], r + s + z + h + hs + m + 2 * x + t + cl_calls),
                (LOCK_VMA_FAILURES.name, vec![remote], m + x),
                (FOLIO_WALKS.name, vec![level(Level::Pte)], r),
                (FOLIO_WALKS.name, vec![level(Level::Pmd)], t),
                (LOCKLESS_PTE_PAGES.name, vec![], r),
                (FOLL_ANON_FILE_BACKED.name, vec![], 0),
                // One GUP per page: two for a straddle and for a hole
                // straddle's first call (the second fails at the hole).
                (GUP_CALLS.name, vec![path(Path::Fallback)], z + h + 2 * hs + 2 * s + 2 * x + cl_calls),
                (GUP_CALLS.name, vec![path(Path::Slow)], 0),
            ]);
        }
        Kernel::Unpatched | Kernel::Legacy => {
            let slow = r + s + z + h + hs + m + 2 * x + t + cl_calls;
            for (p, v) in paths(0, 0, slow) {
                e.push((READS.name, vec![path(p)], v));
                e.push((READ_DURATION_COUNT, vec![path(p)], v));
                e.push((READ_VMAS_COUNT, vec![path(p)], v));
                e.push((READ_VMAS_SUM, vec![path(p)], 0));
            }
            // FOLL_ANON on a file VMA: GUP refuses, the cmdline reads return nothing.
            for (p, v) in paths(0, 0, (r + s + z + h + hs + t) * B + x * HALF) {
                e.push((READ_BYTES.name, vec![path(p)], v));
            }
            e.extend([
                (MULTI_VMA_READS.name, vec![path(Path::Fast)], 0),
                (FALLBACKS.name, vec![reason(Reason::VmaLockFailed)], 0),
                (FALLBACKS.name, vec![reason(Reason::VmaUnsuitable)], 0),
                (FALLBACKS.name, vec![reason(Reason::PageNotPresent)], 0),
                (FALLBACK_LOCKLESS_BYTES.name, vec![], 0),
                (LOCKLESS_BYTES_DISCARDED.name, vec![], 0),
                (LOCKLESS_DISCARDED_READS.name, vec![], 0),
                (MMAP_LOCK_WAIT_COUNT, vec![remote, ("mode", LOCK_READ)], slow + w),
                (MMAP_LOCK_WAIT_COUNT, vec![remote, ("mode", LOCK_WRITE)], m + 2 * x),
                (MMAP_LOCK_HOLD_COUNT, vec![], slow + w),
                (LOCK_VMA_CALLS.name, vec![remote], 0),
                (LOCK_VMA_FAILURES.name, vec![remote], 0),
                (FOLIO_WALKS.name, vec![level(Level::Pte)], 0),
                (FOLIO_WALKS.name, vec![level(Level::Pmd)], 0),
                (LOCKLESS_PTE_PAGES.name, vec![], 0),
                (FOLL_ANON_FILE_BACKED.name, vec![], 0),
                // One GUP per page: the straddles and the first half of the hole
                // straddles span two pages (the second GUP fails at the hole).
                (GUP_CALLS.name, vec![path(Path::Fallback)], 0),
                (GUP_CALLS.name, vec![path(Path::Slow)], r + 2 * s + z + h + 2 * hs + 2 * x + t + cl_calls),
                (FALLBACKS.name, vec![reason(Reason::CrossesVmaEnd)], 0),
            ]);
        }
    }
    e
}

/// What the workload itself must see on `k`.
pub fn expected_ground(k: Kernel, c: &Counts) -> Ground {
    let full = c.resident + c.straddle + c.zero + c.hugetlb + c.hugetlb_straddle + c.thp;
    match k {
        // The hole straddle's lockless bytes are thrown away: EIO. The cmdline
        // reads succeed through the lockless path's FOLL_ANON gap.
        Kernel::Patched(Version::V1) => Ground {
            reads_ok: full,
            bytes_read: full * B,
            bytes_written: c.writes * WRITE_LEN as u64,
            cmdline_bytes: c.cmdline * CMDLINE.len() as u64,
        },
        // GUP refuses FOLL_ANON on a file mapping (v2's fast path too): an
        // empty cmdline; the hole straddle returns its first half.
        Kernel::Patched(Version::V2) | Kernel::Unpatched | Kernel::Legacy => Ground {
            reads_ok: full + c.hole_straddle,
            bytes_read: full * B + c.hole_straddle * HALF,
            bytes_written: c.writes * WRITE_LEN as u64,
            cmdline_bytes: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_names_are_the_catalogs() {
        assert_eq!(READ_DURATION_COUNT, READ_DURATION.count());
        assert_eq!(READ_VMAS_COUNT, READ_VMAS.count());
        assert_eq!(READ_VMAS_SUM, READ_VMAS.sample("_sum"));
        assert_eq!(WRITE_DURATION_COUNT, WRITE_DURATION.count());
        assert_eq!(MMAP_LOCK_WAIT_COUNT, MMAP_LOCK_WAIT.count());
        assert_eq!(MMAP_LOCK_HOLD_COUNT, MMAP_LOCK_HOLD.count());
    }

    #[test]
    fn model_is_self_consistent() {
        const KERNELS: [Kernel; 4] = [Kernel::Patched(Version::V1), Kernel::Patched(Version::V2), Kernel::Unpatched, Kernel::Legacy];
        for (k, vma) in KERNELS.into_iter().flat_map(|k| [(k, true), (k, false)]) {
            let e = expected(k, &COUNTS, vma);
            let get = |name: &str, labels: &[(&str, &str)]| {
                e.iter()
                    .find(|(n, l, _)| *n == name && l.as_slice() == labels)
                    .and_then(|(_, _, v)| *v)
                    .unwrap_or_else(|| panic!("{name} {labels:?} missing"))
            };
            let reads: u64 = Path::ALL.iter().map(|p| get(READS.name, &[("path", p.label())])).sum();
            // Every call is a read or a write, and every entry has its exit.
            assert_eq!(reads + get(WRITES.name, &[]), calls(k, &COUNTS));
            let fallbacks: u64 =
                Reason::ALL.iter().filter(|r| r.reported(vma && k != Kernel::Legacy)).map(|r| get(FALLBACKS.name, &[("reason", r.label())])).sum();
            assert_eq!(fallbacks, get(READS.name, &[("path", Path::Fallback.label())]));
            // Bytes the kernel returned are the bytes the workload got (cmdline:
            // plus the 1-byte probes the workload never sees).
            let bytes: u64 = Path::ALL.iter().map(|p| get(READ_BYTES.name, &[("path", p.label())])).sum();
            let g = expected_ground(k, &COUNTS);
            let probes = if g.cmdline_bytes > 0 { COUNTS.cmdline } else { 0 };
            assert_eq!(bytes, g.bytes_read + g.cmdline_bytes + probes);
            // Every call of a patched kernel runs lock_vma_under_rcu at least
            // once; v2 exactly once.
            if vma && k.is_patched() {
                let locks = get(LOCK_VMA_CALLS.name, &[("context", CONTEXT_REMOTE)]);
                let read_calls = reads;
                assert!(locks >= read_calls, "{k:?}");
                if k == Kernel::Patched(Version::V2) {
                    assert_eq!(locks, read_calls);
                    assert_eq!(get(MULTI_VMA_READS.name, &[("path", "fast")]), 0);
                }
            }
        }
        assert_eq!(calls(Kernel::Patched(Version::V1), &COUNTS), 45 + 3 + 4);
        assert_eq!(calls(Kernel::Patched(Version::V2), &COUNTS), calls(Kernel::Unpatched, &COUNTS));
        assert_eq!(calls(Kernel::Unpatched, &COUNTS), 47 + 3 + 4);
        assert_eq!(calls(Kernel::Legacy, &COUNTS), calls(Kernel::Unpatched, &COUNTS));
        let legacy = expected(Kernel::Legacy, &COUNTS, true);
        assert!(legacy.iter().any(|(n, _, v)| *n == LOCK_VMA_CALLS.name && v.is_none()));
    }
}
