//! The start-up probe read: whether the kernel runs the lockless read path,
//! decided by the kernel itself.
use aya::{Ebpf, maps::Array};
use remote_vm_common::{
    Control, Family, SelfTest,
    classify::ReadPath,
    series::{self, ProbeRead, Seen, Series},
};

use super::Verdict;
use crate::kernel::Layout;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patched {
    Yes,
    No,
    Unknown,
}

impl Patched {
    pub fn as_str(self) -> &'static str {
        match self {
            Patched::Yes => "yes",
            Patched::No => "no",
            Patched::Unknown => "unknown",
        }
    }
}

/// What the start-up probe reads decided, and the probe thread's id in the
/// kernel's initial PID namespace when the access probes saw it.
pub struct Decision {
    pub patched: Patched,
    pub why: String,
    /// Which version of the series the kernel behaves as (`series.rs`).
    pub series: Series,
    pub series_why: String,
    pub host_tid: Option<u32>,
}

/// "no" when the kernel lacks the lockless path's functions; otherwise the
/// kernel decides: read one resident page of our own memory through
/// `/proc/self/mem` and see whether the lockless loop ran. That read is kept
/// out of every counter (`CONTROL.selftest_tid`).
pub fn decide_patched(ebpf: &mut Ebpf, layout: &Layout, verdicts: &[Verdict]) -> Decision {
    let (patched, why, host_tid) = decide(ebpf, layout, verdicts);
    // The second read runs in the same read-path mode as the first (before
    // the mode below changes it).
    let (series, series_why) = match patched {
        Patched::No => (Series::None, why.clone()),
        Patched::Unknown => (Series::Unknown, format!("patched is unknown: {why}")),
        Patched::Yes => decide_series(ebpf, verdicts),
    };
    // How the programs know a read ran the lockless loop from now on.
    let vma_probed = verdicts.iter().any(|v| v.family == Family::LockVmaUnderRcu && v.attached());
    let read_path = match patched {
        _ if !layout.has_lockless_path() => ReadPath::NoLockless,
        Patched::No => ReadPath::NoLockless,
        _ if vma_probed => ReadPath::Probed,
        Patched::Yes => ReadPath::Implied,
        Patched::Unknown => ReadPath::Pending,
    };
    set_read_path(ebpf, read_path);
    Decision { patched, why, series, series_why, host_tid }
}

/// The crossing probe read (`series::fingerprint`).
fn decide_series(ebpf: &mut Ebpf, verdicts: &[Verdict]) -> (Series, String) {
    let attached = |family: Family| verdicts.iter().any(|v| v.family == family && v.attached());
    let seen = Seen { walks: attached(Family::FolioWalkStart), vmas: attached(Family::LockVmaUnderRcu) };
    let v1 = |t: &SelfTest| series::fingerprint(ProbeRead { calls: t.calls, vmas: t.vmas, walks: t.walks }, seen).0 == Series::V1;
    let t = match reset(ebpf).and_then(|()| probe_reads(ebpf, ProbeShape::AcrossTwoVmas, v1)) {
        Ok(t) => t,
        Err(e) => return (Series::Unknown, format!("the read across two VMAs failed: {e}")),
    };
    let (series, why) = series::fingerprint(ProbeRead { calls: t.calls, vmas: t.vmas, walks: t.walks }, seen);
    // Only what the probes counted.
    let counted: Vec<String> = [(seen.vmas, format!("{} VMAs locked", t.vmas)), (seen.walks, format!("{} lockless walks", t.walks))]
        .into_iter()
        .filter_map(|(seen, what)| seen.then_some(what))
        .collect();
    (series, format!("{why} ({})", counted.join(", ")))
}

/// Start-up probe reads repeated while their answer may be a passing
/// refusal rather than the kernel's: the lockless loop's VMA lock fails while
/// another thread of this process changes its mappings (the daemon's own
/// threads start meanwhile), and the read then goes to the mmap_lock path
/// whole. Seen once in 2026-12-07's kernel matrix: a patched kernel (v2) said
/// `patched: no` for one daemon start of many. Only the kernel's answer is the
/// same every time, so a "no lockless loop" (and v2's shape, which a refusal
/// on v1 also has) is believed after this many reads.
const PROBE_READS: usize = 5;
const PROBE_READ_GAP: std::time::Duration = std::time::Duration::from_millis(10);

/// Up to `PROBE_READS` probe reads of `shape`, until one is `settled`: that
/// one, else the last (an error at once).
fn probe_reads(ebpf: &mut Ebpf, shape: ProbeShape, settled: impl Fn(&SelfTest) -> bool) -> Result<SelfTest, String> {
    let mut read = 1;
    loop {
        let t = probe_read(ebpf, shape)?;
        if settled(&t) || read == PROBE_READS {
            return Ok(t);
        }
        read += 1;
        std::thread::sleep(PROBE_READ_GAP);
        reset(ebpf)?;
    }
}

/// `SELFTEST` back to zeros, for the next probe read.
fn reset(ebpf: &mut Ebpf) -> Result<(), String> {
    let mut selftest: Array<_, SelfTest> =
        Array::try_from(ebpf.map_mut("SELFTEST").ok_or("no SELFTEST map")?).map_err(|e| e.to_string())?;
    selftest.set(0, SelfTest::default(), 0).map_err(|e| e.to_string())
}

/// Rewrites the `CONTROL` word with `change` (the rest stays as it is).
fn update_control(ebpf: &mut Ebpf, change: impl FnOnce(Control) -> Control) -> Result<(), String> {
    let mut control: Array<_, Control> =
        Array::try_from(ebpf.map_mut("CONTROL").ok_or("no CONTROL map")?).map_err(|e| e.to_string())?;
    let c = control.get(&0, 0).map_err(|e| e.to_string())?;
    control.set(0, change(c), 0).map_err(|e| e.to_string())
}

/// Whether remote waits come from the lock's contention events
/// (`Control::remote_waits_from_contention`).
pub fn set_remote_waits_from_contention(ebpf: &mut Ebpf, yes: bool) -> Result<(), String> {
    update_control(ebpf, |c| Control { remote_waits_from_contention: u32::from(yes), ..c })
}

/// Writes `Control::read_path`.
pub fn set_read_path(ebpf: &mut Ebpf, read_path: ReadPath) {
    if let Err(e) = update_control(ebpf, |c| Control { read_path: read_path as u32, ..c }) {
        log::warn!("cannot write the read path to the CONTROL map ({e}): reads are classified as if every step were probed");
    }
}

fn decide(ebpf: &mut Ebpf, layout: &Layout, verdicts: &[Verdict]) -> (Patched, String, Option<u32>) {
    let attached = |family: Family| verdicts.iter().any(|v| v.family == family && v.attached());
    // The probe read runs whenever the access probes are attached: it also
    // tells the probe thread's id in the initial PID namespace.
    let t = if attached(Family::AccessRemoteVm) {
        Some(probe_reads(ebpf, ProbeShape::InsideOnePage, |t| t.lockless > 0 || t.calls == 0))
    } else {
        None
    };
    let host_tid = t.as_ref().and_then(|t| t.as_ref().ok()).filter(|t| t.calls > 0 && t.host_tid != 0).map(|t| t.host_tid);
    if !layout.has_lockless_path() {
        return (
            Patched::No,
            format!(
                "the kernel has no lockless read path (lock_vma_under_rcu={}, folio_walk_start={})",
                layout.has_lock_vma_under_rcu, layout.has_folio_walk_start
            ),
            host_tid,
        );
    }
    let Some(t) = t else {
        return (Patched::Unknown, format!("probe family {} is not attached", Family::AccessRemoteVm.name()), None);
    };
    // The loop's evidence: its VMA step where probed, else its walks.
    if !attached(Family::LockVmaUnderRcu) && !attached(Family::FolioWalkStart) {
        return (
            Patched::Unknown,
            format!("neither {} nor {} is attached", Family::LockVmaUnderRcu.name(), Family::FolioWalkStart.name()),
            host_tid,
        );
    }
    let t = match t {
        Ok(t) => t,
        Err(e) => return (Patched::Unknown, format!("probe read failed: {e}"), None),
    };
    let (patched, why) = if t.calls == 0 {
        (Patched::Unknown, "the probe read of /proc/self/mem was not seen by the access probes".to_string())
    } else if t.lockless > 0 {
        (
            Patched::Yes,
            format!("a read of a resident page of /proc/self/mem ran the lockless loop ({} lockless walk)", t.walks),
        )
    } else {
        (Patched::No, format!("{PROBE_READS} reads of a resident page of /proc/self/mem did not run the lockless loop"))
    };
    (patched, why, host_tid)
}

/// What a start-up probe read reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeShape {
    /// 64 bytes inside one resident page.
    InsideOnePage,
    /// `CROSSING_HALF` bytes each side of the boundary of two resident
    /// anonymous mappings of different protections (two VMAs).
    AcrossTwoVmas,
}

/// Two resident pages in two VMAs, unmapped on drop.
struct TwoVmas {
    base: *mut libc::c_void,
}

impl TwoVmas {
    const PAGE: usize = 4096;

    fn new() -> Result<TwoVmas, String> {
        // SAFETY: a fresh private anonymous mapping; no memory of ours is touched.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), 2 * Self::PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if base == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let two = TwoVmas { base };
        // SAFETY: both pages are ours, writable.
        unsafe { std::ptr::write_bytes(base.cast::<u8>(), 0x5a, 2 * Self::PAGE) };
        // The second page read-only: a VMA of its own (different flags never merge).
        // SAFETY: the second page of our own mapping.
        if unsafe { libc::mprotect(base.cast::<u8>().add(Self::PAGE).cast(), Self::PAGE, libc::PROT_READ) } != 0 {
            return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
        }
        Ok(two)
    }

    /// The first byte of the read across the boundary.
    fn read_addr(&self) -> u64 {
        self.base as u64 + (Self::PAGE - series::CROSSING_HALF) as u64
    }
}

impl Drop for TwoVmas {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this.
        unsafe { libc::munmap(self.base, 2 * Self::PAGE) };
    }
}

fn probe_read(ebpf: &mut Ebpf, shape: ProbeShape) -> Result<SelfTest, String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    // Without /proc/self/ns/pid the kernel has no PID namespaces: the initial
    // one is ours, and the probes compare its numbering (dev, ino = 0).
    let (pidns_dev, pidns_ino) = match std::fs::metadata("/proc/self/ns/pid") {
        Ok(ns) => (ns.dev(), ns.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
        Err(e) => return Err(format!("/proc/self/ns/pid: {e}")),
    };
    let mut control: Array<_, Control> =
        Array::try_from(ebpf.map_mut("CONTROL").ok_or("no CONTROL map")?).map_err(|e| e.to_string())?;
    let before = control.get(&0, 0).map_err(|e| e.to_string())?;
    let mark = Control {
        selftest_tid: tid,
        pidns_dev,
        pidns_ino,
        ..before
    };
    control.set(0, mark, 0).map_err(|e| e.to_string())?;
    // Resident memory of our own: written, so present.
    let page = vec![0x5au8; 4096];
    let two = match shape {
        ProbeShape::InsideOnePage => None,
        ProbeShape::AcrossTwoVmas => Some(TwoVmas::new()?),
    };
    let addr = two.as_ref().map_or(page.as_ptr() as u64, TwoVmas::read_addr);
    let result = (|| {
        use std::os::unix::fs::FileExt;
        let mem = std::fs::File::open("/proc/self/mem").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2 * series::CROSSING_HALF];
        // One call: a short read is an answer of its own, not retried.
        let n = mem.read_at(&mut buf, addr).map_err(|e| e.to_string())?;
        if n != buf.len() {
            return Err(format!("read {n} of {} bytes", buf.len()));
        }
        if buf != [0x5a; 2 * series::CROSSING_HALF] {
            return Err("read back different bytes".to_string());
        }
        Ok(())
    })();
    control
        .set(0, Control { selftest_tid: 0, pidns_dev: 0, pidns_ino: 0, ..before }, 0)
        .map_err(|e| e.to_string())?;
    drop(page);
    drop(two);
    result?;
    let selftest: Array<_, SelfTest> =
        Array::try_from(ebpf.map("SELFTEST").ok_or("no SELFTEST map")?).map_err(|e| e.to_string())?;
    selftest.get(&0, 0).map_err(|e| e.to_string())
}
