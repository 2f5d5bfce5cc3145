//! Runs the kernel says a program missed (and the raw `bpf(2)` calls the
//! daemon makes itself): a program's `recursion_misses` (from
//! `BPF_OBJ_GET_INFO_BY_FD` on its fd) and a kprobe link's `missed` (kprobe
//! recursion and kretprobe `maxactive` overflows, Linux 6.7+). Both are read
//! through file descriptors held since attach, so no privilege is needed later.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use aya_obj::generated::{
    bpf_cmd, bpf_link_info, bpf_link_type, bpf_perf_event_type, bpf_prog_info,
};

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

pub(super) fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<i64> {
    // SAFETY: the bpf(2) syscall with an attr of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_long,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn info_by_fd<I>(fd: RawFd) -> io::Result<I> {
    // SAFETY: both info structs are plain C data, valid zeroed.
    let mut info: I = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<I>() as u32,
        info: &mut info as *mut I as u64,
    };
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The id of the program behind `fd`.
pub fn prog_id(fd: RawFd) -> io::Result<u32> {
    let info: bpf_prog_info = info_by_fd(fd)?;
    Ok(info.id)
}

/// `(recursion misses, runs, run time in ns)` of the program behind `fd` (the
/// kernel counts runs and their time only while it collects run statistics).
pub fn prog_counts(fd: RawFd) -> io::Result<(u64, u64, u64)> {
    let info: bpf_prog_info = info_by_fd(fd)?;
    Ok((info.recursion_misses, info.run_cnt, info.run_time_ns))
}

/// The kprobe links of `prog_ids` among this process's own file descriptors
/// (aya holds them), duplicated so they can be read later: no privilege needed.
pub fn kprobe_links(prog_ids: &[u32]) -> Vec<(u32, OwnedFd)> {
    own_links(prog_ids)
        .into_iter()
        .filter(|(_, _, info)| kprobe_missed(info).is_some())
        .map(|(id, fd, _)| (id, fd))
        .collect()
}

/// The links of `prog_ids` among this process's own file descriptors, found
/// through `/proc/self/fdinfo`, duplicated, with their info.
pub fn own_links(prog_ids: &[u32]) -> Vec<(u32, OwnedFd, bpf_link_info)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        let (Some(_link_id), Some(prog_id)) = (field("link_id:"), field("prog_id:")) else {
            continue;
        };
        if !prog_ids.contains(&prog_id) {
            continue;
        }
        // SAFETY: duplicating one of our own open descriptors.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: a new descriptor we own.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        if let Ok(link) = info_by_fd::<bpf_link_info>(dup.as_raw_fd()) {
            out.push((prog_id, dup, link));
        }
    }
    out
}

fn kprobe_missed(info: &bpf_link_info) -> Option<u64> {
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_PERF_EVENT as u32 {
        return None;
    }
    // SAFETY: the union member the link type selects.
    let pe = unsafe { &info.__bindgen_anon_1.perf_event };
    let kinds = [
        bpf_perf_event_type::BPF_PERF_EVENT_KPROBE as u32,
        bpf_perf_event_type::BPF_PERF_EVENT_KRETPROBE as u32,
    ];
    if !kinds.contains(&pe.type_) {
        return None;
    }
    // SAFETY: as above.
    Some(unsafe { pe.__bindgen_anon_1.kprobe.missed })
}

/// `missed` of a kprobe link held since attach.
pub fn link_missed(fd: &OwnedFd) -> io::Result<u64> {
    let info = info_by_fd::<bpf_link_info>(fd.as_raw_fd())?;
    kprobe_missed(&info).ok_or_else(|| io::Error::other("not a kprobe link"))
}
