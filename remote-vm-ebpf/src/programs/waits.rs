//! Waits in progress: a task iterator (`iter/task`) the daemon runs at each
//! scrape. It walks the tasks of the daemon's PID namespace, looks each one's
//! `CALLS` state up (no entry for a task that never made a remote access) and
//! writes one `StallEvent` per remote access waiting for its target's
//! mmap_lock now (`end_ns`: now, `wait_ns`: the age so far) — only while the
//! thread sleeps and the lock has waiters (`wait_is_real`), so a wait whose
//! end no program saw is not reported for ever. For each such wait it also
//! observes the target lock's holder again and keeps that in the waiter's
//! state, so the stall event, when the wait ends, carries the latest
//! observation taken while it waited. Nothing is added to the remote-access
//! paths for it: they already keep the state.
//!
//! aya-ebpf 0.2.1 has no `#[iter]` macro; the program is written the way the
//! others expand (section name, a context pointer, return 0). Attach target:
//! `bpf_iter_task` (Linux 5.8+); `bpf_task_pt_regs` needs 5.15.
use core::ffi::c_void;

use aya_ebpf::bindings::task_struct;

use aya_ebpf::helpers::generated::{bpf_seq_write, bpf_task_storage_get};
use remote_vm_common::{
    StallEvent,
    classify::{CallState, wait_is_real},
};

use super::{
    layout::{MM_MMAP_LOCK_OFF, RWSEM_COUNT_OFF, TASK_PID_OFF, TASK_STATE_OFF, known},
    lock::{describe, observe_holder, task_identity},
    maps::{CALLS, IterTask, call_slot, now, read_u32, read_u64},
};

/// `task`'s call state: in its slot when it holds it, else in task storage.
#[inline(always)]
fn call_state_of(task: *mut task_struct) -> Option<&'static mut CallState> {
    let pid_off = TASK_PID_OFF.load();
    if known(pid_off) {
        let tid = u64::from(read_u32(task as u64, pid_off));
        let slot = call_slot(tid);
        if slot.held_by(tid) {
            return Some(&mut slot.state);
        }
    }
    // SAFETY: a trusted task pointer from the iterator, the CALLS map; no create.
    let state = unsafe { bpf_task_storage_get(CALLS.as_ptr(), task, core::ptr::null_mut(), 0) };
    // SAFETY: NULL or this task's CallState.
    unsafe { (state as *mut CallState).as_mut() }
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
    let Some(state) = call_state_of(task) else {
        return 0;
    };
    let t = now();
    let Some((age, write)) = state.wait_in_progress(t) else {
        return 0;
    };
    // A wait whose end was never seen (a missed kretprobe, a skipped fexit)
    // must not stay "in progress": only while the thread sleeps and the
    // target's lock has waiters.
    let state_off = TASK_STATE_OFF.load();
    let task_state = known(state_off).then(|| read_u32(task as u64, state_off));
    let (lock_off, count_off) = (MM_MMAP_LOCK_OFF.load(), RWSEM_COUNT_OFF.load());
    let lock_count = (known(lock_off) && known(count_off)).then(|| read_u64(state.mm.wrapping_add(lock_off), count_off));
    if !wait_is_real(task_state, lock_count) {
        return 0;
    }
    // The holder again, as it is now (a wait can outlast a holder: the lock
    // passes from writer to writer, or to readers, ahead of this one): what a
    // stall reports is its holder's last observation while it waited. A lock
    // found free (between two holders) keeps the observation before.
    if known(lock_off) {
        observe_holder::<false>(state.mm.wrapping_add(lock_off), &mut state.holder);
    }
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
