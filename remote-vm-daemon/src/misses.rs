//! Runs the kernel says a program missed: a program's `recursion_misses` (from
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

#[repr(C)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<i64> {
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

/// `(prog id, recursion misses)` of the program behind `fd`.
pub fn prog_id_and_misses(fd: RawFd) -> io::Result<(u32, u64)> {
    let info: bpf_prog_info = info_by_fd(fd)?;
    Ok((info.id, info.recursion_misses))
}

/// The kprobe links of `prog_ids`, opened now (this needs CAP_SYS_ADMIN, which
/// the daemon has while attaching) and kept for reading `missed` later.
pub fn kprobe_links(prog_ids: &[u32]) -> Vec<(u32, OwnedFd)> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut next = IdAttr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        if bpf(bpf_cmd::BPF_LINK_GET_NEXT_ID, &mut next).is_err() {
            break;
        }
        id = next.next_id;
        let mut open = IdAttr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        let Ok(fd) = bpf(bpf_cmd::BPF_LINK_GET_FD_BY_ID, &mut open) else {
            continue;
        };
        // SAFETY: a new fd the kernel just gave us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if let Ok(info) = info_by_fd::<bpf_link_info>(fd.as_raw_fd()) {
            if prog_ids.contains(&info.prog_id) && kprobe_missed(&info).is_some() {
                out.push((info.prog_id, fd));
            }
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
pub fn link_missed(fd: &OwnedFd) -> Option<u64> {
    info_by_fd::<bpf_link_info>(fd.as_raw_fd())
        .ok()
        .and_then(|info| kprobe_missed(&info))
}
