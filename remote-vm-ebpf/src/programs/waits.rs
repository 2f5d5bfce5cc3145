//! Waits in progress: a task iterator (`iter/task`) the daemon runs at each
//! scrape. It walks the tasks of the daemon's PID namespace, looks each one's
//! `CALLS` state up (no entry for a task that never made a remote access) and
//! writes one `StallEvent` per remote access waiting for its target's
//! mmap_lock now (`end_ns`: now, `wait_ns`: the age so far). Nothing is added
//! to the remote-access paths for it: they already keep the state.
//!
//! aya-ebpf 0.2.1 has no `#[iter]` macro; the program is written the way the
//! others expand (section name, a context pointer, return 0). Attach target:
//! `bpf_iter_task` (Linux 5.8+); `bpf_task_pt_regs` needs 5.15.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::task_struct,
    helpers::generated::{bpf_seq_write, bpf_task_storage_get},
};
use remote_vm_common::{StallEvent, classify::CallState};

use super::{
    lock::{describe, task_identity},
    maps::{CALLS, now},
};

/// `struct bpf_iter_meta`.
#[repr(C)]
struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task`: `task` is NULL on the call after the last task.
#[repr(C)]
struct IterTask {
    meta: *mut IterMeta,
    task: *mut task_struct,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn waits_in_progress(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel passes a `struct bpf_iter__task`.
    let ctx = unsafe { &*(ctx as *const IterTask) };
    let task = ctx.task;
    if task.is_null() {
        return 0;
    }
    // SAFETY: a trusted task pointer from the iterator, the CALLS map; no create.
    let state = unsafe { bpf_task_storage_get(CALLS.as_ptr(), task, core::ptr::null_mut(), 0) };
    // SAFETY: NULL or this task's CallState.
    let Some(state) = (unsafe { (state as *const CallState).as_ref() }) else {
        return 0;
    };
    let t = now();
    let Some((age, write)) = state.wait_in_progress(t) else {
        return 0;
    };
    let mut e: StallEvent = describe(state, task, write);
    e.end_ns = t;
    e.wait_ns = age;
    e.cgroup_id = state.cgroup_id;
    (e.reader_tgid, e.reader_tid, e.reader_comm) = task_identity(task as u64);
    // SAFETY: meta is the iterator's; `e` lives on this stack for the call.
    unsafe {
        bpf_seq_write((*ctx.meta).seq.cast(), (&raw const e).cast(), core::mem::size_of::<StallEvent>() as u32);
    }
    0
}
