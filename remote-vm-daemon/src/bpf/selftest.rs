//! The start-up probe read: whether the kernel runs the lockless read path,
//! decided by the kernel itself.
use aya::{Ebpf, maps::Array};
use remote_vm_common::{Control, Family, SelfTest};

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

/// "no" when the kernel lacks the lockless path's functions; otherwise the
/// kernel decides: read one resident page of our own memory through
/// `/proc/self/mem` and see whether the lockless loop ran. That read is kept
/// out of every counter (`CONTROL.selftest_tid`).
pub fn decide_patched(ebpf: &mut Ebpf, layout: &Layout, verdicts: &[Verdict]) -> (Patched, String) {
    if !layout.has_lockless_path() {
        return (
            Patched::No,
            format!(
                "the kernel has no lockless read path (lock_vma_under_rcu={}, folio_walk_start={})",
                layout.has_lock_vma_under_rcu, layout.has_folio_walk_start
            ),
        );
    }
    for family in [Family::AccessRemoteVm, Family::LockVmaUnderRcu] {
        if !verdicts.iter().any(|v| v.family == family && v.attached()) {
            return (Patched::Unknown, format!("probe family {} is not attached", family.name()));
        }
    }
    match probe_read(ebpf) {
        Ok(t) if t.calls == 0 => (
            Patched::Unknown,
            "the probe read of /proc/self/mem was not seen by the access probes".into(),
        ),
        Ok(t) if t.lockless > 0 => (
            Patched::Yes,
            format!("a read of a resident page of /proc/self/mem ran the lockless loop ({} lockless walk)", t.walks),
        ),
        Ok(_) => (
            Patched::No,
            "a read of a resident page of /proc/self/mem did not run the lockless loop".into(),
        ),
        Err(e) => (Patched::Unknown, format!("probe read failed: {e}")),
    }
}

fn probe_read(ebpf: &mut Ebpf) -> Result<SelfTest, String> {
    let tid = unsafe { libc::gettid() } as u32;
    let mut control: Array<_, Control> =
        Array::try_from(ebpf.map_mut("CONTROL").ok_or("no CONTROL map")?).map_err(|e| e.to_string())?;
    control
        .set(0, Control { selftest_tid: tid, _pad: 0 }, 0)
        .map_err(|e| e.to_string())?;
    // One resident page of our own: written, so present.
    let page = vec![0x5au8; 4096];
    let addr = page.as_ptr() as u64;
    let result = (|| {
        use std::os::unix::fs::FileExt;
        let mem = std::fs::File::open("/proc/self/mem").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        mem.read_at(&mut buf, addr).map_err(|e| e.to_string())?;
        if buf != [0x5a; 64] {
            return Err("read back different bytes".to_string());
        }
        Ok(())
    })();
    control.set(0, Control::default(), 0).map_err(|e| e.to_string())?;
    drop(page);
    result?;
    let selftest: Array<_, SelfTest> =
        Array::try_from(ebpf.map("SELFTEST").ok_or("no SELFTEST map")?).map_err(|e| e.to_string())?;
    selftest.get(&0, 0).map_err(|e| e.to_string())
}
