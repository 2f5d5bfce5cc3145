//! Waits in progress: the `waits_in_progress` task iterator
//! (`remote-vm-ebpf/src/programs/waits.rs`), attached once at start-up and run
//! at each scrape with `BPF_ITER_CREATE` on a duplicate of its link — no
//! capability is needed for that, so it keeps working after the privilege
//! drop. The iterator walks the tasks of the daemon's PID namespace only:
//! outside the host's, waits in progress are not reported at all (a partial
//! count would read as "nobody stuck").
use std::{
    io::{self, Read},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use aya::{Btf, Ebpf, programs::Iter};
use aya_obj::generated::{bpf_cmd, bpf_link_type};
use remote_vm_common::StallEvent;

use super::misses;

/// The program's name in the object.
pub const PROGRAM: &str = "waits_in_progress";
/// At most this many waits are listed (`/stalls`' `in_progress`); all are counted.
pub const LIST_MAX: usize = 256;
/// At most this many bytes are read from one iterator run (64 Ki waits).
const READ_MAX: u64 = 64 * 1024 * std::mem::size_of::<StallEvent>() as u64;

/// The waits in progress at one moment.
#[derive(Clone, Debug, Default)]
pub struct WaitsNow {
    pub count: u64,
    /// The longest wait's age (ns), 0 when none.
    pub oldest_ns: u64,
    /// The first `LIST_MAX`, oldest first.
    pub listed: Vec<StallEvent>,
}

impl WaitsNow {
    /// From the iterator's output: whole `StallEvent` records.
    pub fn parse(bytes: &[u8]) -> WaitsNow {
        let size = std::mem::size_of::<StallEvent>();
        let mut now = WaitsNow::default();
        for chunk in bytes.chunks_exact(size) {
            // SAFETY: a whole record (chunks_exact); any bit pattern is a valid StallEvent.
            let e: StallEvent = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
            now.count += 1;
            now.oldest_ns = now.oldest_ns.max(e.wait_ns);
            if now.listed.len() < LIST_MAX {
                now.listed.push(e);
            }
        }
        now.listed.sort_by(|a, b| b.wait_ns.cmp(&a.wait_ns));
        now
    }
}

/// The attached iterator: a duplicate of its link's descriptor.
pub struct WaitsIter {
    link: OwnedFd,
}

#[repr(C)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

impl WaitsIter {
    /// Loads and attaches the iterator; `Err`: why waits in progress are not
    /// reported. `nested`: whether the start-up probe read found the daemon's
    /// thread numbered differently in the kernel's initial PID namespace
    /// (`None`: no probe read; `/proc/self/status` decides, which a PID
    /// namespace with its own /proc mount can hide).
    pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>, nested: Option<bool>) -> Result<WaitsIter, String> {
        const ONLY_OWN: &str = "the task iterator would see only its own namespace's tasks";
        if nested == Some(true) {
            return Err(format!("the daemon is not in the host PID namespace (its thread ids differ from the kernel's); {ONLY_OWN}"));
        }
        if let Some(ns) = nested_pid_namespace() {
            return Err(format!("the daemon is not in the host PID namespace (NSpid {ns}); {ONLY_OWN}"));
        }
        let btf = btf.ok_or("no kernel BTF")?;
        let program: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .ok_or("the eBPF object has no task iterator")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        program
            .load("task", btf)
            .map_err(|e| format!("loading the task iterator: {}", super::attach::describe(&e)))?;
        program
            .attach()
            .map_err(|e| format!("attaching the task iterator: {}", super::attach::describe(&e)))?;
        let fd = program.fd().map_err(|e| format!("{e}"))?;
        let prog_id = misses::prog_id(fd.as_fd().as_raw_fd()).map_err(|e| format!("program info: {e}"))?;
        let link = misses::own_links(&[prog_id])
            .into_iter()
            .find(|(_, _, info)| info.type_ == bpf_link_type::BPF_LINK_TYPE_ITER as u32)
            .map(|(_, fd, _)| fd)
            .ok_or("the task iterator's link is not among the daemon's descriptors")?;
        let it = WaitsIter { link };
        it.read().map_err(|e| format!("running the task iterator: {e}"))?;
        Ok(it)
    }

    /// Runs the iterator once.
    pub fn read(&self) -> io::Result<WaitsNow> {
        let mut attr = IterCreateAttr {
            link_fd: self.link.as_raw_fd() as u32,
            flags: 0,
        };
        let fd = misses::bpf(bpf_cmd::BPF_ITER_CREATE, &mut attr)?;
        // SAFETY: a new descriptor the kernel returned to us.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        let mut bytes = Vec::new();
        file.take(READ_MAX).read_to_end(&mut bytes)?;
        Ok(WaitsNow::parse(&bytes))
    }
}

/// `Some("a b …")` when `/proc/self/status` shows the daemon in a PID
/// namespace below the host's (more than one number in `NSpid`).
fn nested_pid_namespace() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    nested_from_status(&status)
}

fn nested_from_status(status: &str) -> Option<String> {
    let ids: Vec<&str> = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().collect();
    (ids.len() > 1).then(|| ids.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_namespaces_from_nspid() {
        assert_eq!(nested_from_status("Name:\tx\nNSpid:\t4242\n"), None);
        assert_eq!(nested_from_status("NSpid:\t4242\t1\n").as_deref(), Some("4242 1"));
        // A kernel without NSpid (< 4.1): assume the host's.
        assert_eq!(nested_from_status("Name:\tx\n"), None);
    }

    #[test]
    fn records_are_counted_and_listed_oldest_first() {
        let size = std::mem::size_of::<StallEvent>();
        let mut bytes = Vec::new();
        for (i, age) in [5u64, 9, 7].iter().enumerate() {
            let mut rec = vec![0u8; size];
            // wait_ns is the second u64.
            rec[8..16].copy_from_slice(&age.to_ne_bytes());
            rec[32..36].copy_from_slice(&(i as u32).to_ne_bytes());
            bytes.extend(rec);
        }
        // A torn tail (never written by the kernel) is ignored.
        bytes.extend([1, 2, 3]);
        let now = WaitsNow::parse(&bytes);
        assert_eq!((now.count, now.oldest_ns), (3, 9));
        assert_eq!(now.listed.iter().map(|e| e.wait_ns).collect::<Vec<_>>(), vec![9, 7, 5]);
        assert_eq!(WaitsNow::parse(&[]).count, 0);
    }
}
