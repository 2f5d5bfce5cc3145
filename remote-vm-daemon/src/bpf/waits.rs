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
/// At most this many waits are listed (`/stalls`' `in_progress`, the oldest);
/// all are counted.
pub const LIST_MAX: usize = remote_vm_common::WAITS_LISTED_MAX;
/// The iterator's output is read this many records at a time: however many
/// waits there are, reading them takes this much memory and the list.
const READ_RECORDS: usize = 1024;

/// The waits in progress at one moment.
#[derive(Clone, Debug, Default)]
pub struct WaitsNow {
    /// Every wait the iterator reported.
    pub count: u64,
    /// The longest wait's age (ns), 0 when none.
    pub oldest_ns: u64,
    /// The `LIST_MAX` oldest, oldest first (ties: by reader tid).
    pub listed: Vec<StallEvent>,
}

/// A listed wait, ordered so that the heap's top is the one to drop first:
/// the youngest, then the highest tid.
struct ByAge(StallEvent);

impl ByAge {
    fn key(&self) -> (std::cmp::Reverse<u64>, u32) {
        (std::cmp::Reverse(self.0.wait_ns), self.0.reader_tid)
    }
}

impl PartialEq for ByAge {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ByAge {}
impl PartialOrd for ByAge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByAge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl WaitsNow {
    /// From the iterator's output: whole `StallEvent` records, read in
    /// chunks to the end (a torn tail, which the kernel never writes, is
    /// ignored).
    pub fn read_from(mut input: impl Read) -> io::Result<WaitsNow> {
        let size = std::mem::size_of::<StallEvent>();
        let mut now = WaitsNow::default();
        let mut oldest = std::collections::BinaryHeap::with_capacity(LIST_MAX + 1);
        let mut buf = vec![0u8; READ_RECORDS * size];
        let mut filled = 0;
        loop {
            let n = match input.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            filled += n;
            let whole = filled / size * size;
            for chunk in buf[..whole].chunks_exact(size) {
                // SAFETY: a whole record (chunks_exact); any bit pattern is a valid StallEvent.
                let e: StallEvent = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
                now.count += 1;
                now.oldest_ns = now.oldest_ns.max(e.wait_ns);
                oldest.push(ByAge(e));
                if oldest.len() > LIST_MAX {
                    oldest.pop();
                }
            }
            buf.copy_within(whole..filled, 0);
            filled -= whole;
            if n == 0 {
                break;
            }
        }
        now.listed = oldest.into_sorted_vec().into_iter().map(|w| w.0).collect();
        Ok(now)
    }
}

/// An attached task iterator: a duplicate of its link's descriptor, run with
/// `BPF_ITER_CREATE` (no capability needed).
pub struct TaskIter {
    link: OwnedFd,
}

#[repr(C)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

impl TaskIter {
    /// Loads and attaches the task iterator `program`; `Err`: why not.
    /// `nested`: whether the start-up probe read found the daemon's thread
    /// numbered differently in the kernel's initial PID namespace (`None`: no
    /// probe read; `/proc/self/status` decides, which a PID namespace with
    /// its own /proc mount can hide).
    pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>, nested: Option<bool>, program: &str) -> Result<TaskIter, String> {
        const ONLY_OWN: &str = "the task iterator would see only its own namespace's tasks";
        if nested == Some(true) {
            return Err(format!("the daemon is not in the host PID namespace (its thread ids differ from the kernel's); {ONLY_OWN}"));
        }
        if let Some(ns) = nested_pid_namespace() {
            return Err(format!("the daemon is not in the host PID namespace (NSpid {ns}); {ONLY_OWN}"));
        }
        let btf = btf.ok_or("no kernel BTF")?;
        let prog: &mut Iter = ebpf
            .program_mut(program)
            .ok_or_else(|| format!("the eBPF object has no task iterator {program}"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load("task", btf)
            .map_err(|e| format!("loading the task iterator {program}: {}", super::attach::describe(&e)))?;
        prog.attach()
            .map_err(|e| format!("attaching the task iterator {program}: {}", super::attach::describe(&e)))?;
        let fd = prog.fd().map_err(|e| format!("{e}"))?;
        let prog_id = misses::prog_id(fd.as_fd().as_raw_fd()).map_err(|e| format!("program info: {e}"))?;
        let link = misses::own_links(&[prog_id])
            .into_iter()
            .find(|(_, _, info)| info.type_ == bpf_link_type::BPF_LINK_TYPE_ITER as u32)
            .map(|(_, fd, _)| fd)
            .ok_or_else(|| format!("the task iterator {program}'s link is not among the daemon's descriptors"))?;
        Ok(TaskIter { link })
    }

    /// One run: its output to read to the end.
    pub fn run(&self) -> io::Result<std::fs::File> {
        let mut attr = IterCreateAttr {
            link_fd: self.link.as_raw_fd() as u32,
            flags: 0,
        };
        let fd = misses::bpf(bpf_cmd::BPF_ITER_CREATE, &mut attr)?;
        // SAFETY: a new descriptor the kernel returned to us.
        Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Another handle on the same link (for another thread).
    pub fn try_clone(&self) -> io::Result<TaskIter> {
        Ok(TaskIter { link: self.link.try_clone()? })
    }
}

/// The waits iterator.
pub struct WaitsIter(TaskIter);

impl WaitsIter {
    /// Loads, attaches and runs it once; `Err`: why waits in progress are not
    /// reported (see [`TaskIter::attach`]).
    pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>, nested: Option<bool>) -> Result<WaitsIter, String> {
        let it = WaitsIter(TaskIter::attach(ebpf, btf, nested, PROGRAM)?);
        it.read().map_err(|e| format!("running the task iterator: {e}"))?;
        Ok(it)
    }

    /// Runs the iterator once.
    pub fn read(&self) -> io::Result<WaitsNow> {
        WaitsNow::read_from(self.0.run()?)
    }

    pub fn try_clone(&self) -> io::Result<WaitsIter> {
        Ok(WaitsIter(self.0.try_clone()?))
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

    fn record(age: u64, tid: u32) -> Vec<u8> {
        let mut rec = vec![0u8; std::mem::size_of::<StallEvent>()];
        // wait_ns is the second u64, reader_tid the u32 at 28.
        rec[8..16].copy_from_slice(&age.to_ne_bytes());
        rec[28..32].copy_from_slice(&tid.to_ne_bytes());
        rec
    }

    #[test]
    fn records_are_counted_and_listed_oldest_first() {
        let mut bytes: Vec<u8> = [(5u64, 1u32), (9, 2), (7, 3)].iter().flat_map(|(a, t)| record(*a, *t)).collect();
        // A torn tail (never written by the kernel) is ignored.
        bytes.extend([1, 2, 3]);
        let now = WaitsNow::read_from(&bytes[..]).unwrap();
        assert_eq!((now.count, now.oldest_ns), (3, 9));
        assert_eq!(now.listed.iter().map(|e| e.wait_ns).collect::<Vec<_>>(), vec![9, 7, 5]);
        assert_eq!(WaitsNow::read_from(&[][..]).unwrap().count, 0);
    }

    /// Hands out its bytes a few at a time, as a reader may.
    struct Dribble<'a>(&'a [u8], usize);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn every_wait_is_counted_and_the_oldest_are_listed() {
        // 70,000 waits (1360921 counted at most 65,536 and listed the first
        // 256 the iterator met, the lowest tids): tid i waits (i * 7919) %
        // 70,000 ns, so ages are a permutation and the oldest known.
        const N: u32 = 70_000;
        let age = |tid: u32| u64::from(tid) * 7919 % u64::from(N);
        let bytes: Vec<u8> = (0..N).flat_map(|tid| record(age(tid), tid)).collect();
        for chunk in [bytes.len(), 4096, 97] {
            let now = WaitsNow::read_from(Dribble(&bytes, chunk)).unwrap();
            assert_eq!(now.count, u64::from(N));
            assert_eq!(now.oldest_ns, u64::from(N) - 1);
            let ages: Vec<u64> = now.listed.iter().map(|e| e.wait_ns).collect();
            let want: Vec<u64> = (0..LIST_MAX as u64).map(|k| u64::from(N) - 1 - k).collect();
            assert_eq!(ages, want, "read {chunk} bytes at a time");
            assert!(now.listed.iter().all(|e| age(e.reader_tid) == e.wait_ns));
        }
    }

    #[test]
    fn equal_ages_are_listed_by_tid() {
        let bytes: Vec<u8> = (0..(LIST_MAX as u32 + 10)).rev().flat_map(|tid| record(5, tid)).collect();
        let now = WaitsNow::read_from(&bytes[..]).unwrap();
        assert_eq!(now.listed.iter().map(|e| e.reader_tid).collect::<Vec<_>>(), (0..LIST_MAX as u32).collect::<Vec<_>>());
    }
}
