//! Holders' kernel stacks: a task iterator (`iter/task`) the daemon runs,
//! after `waits_in_progress`, for the thread ids it put in `STACK_WANTED`
//! (the writers holding the locks of the waits it found). For each such
//! task it writes one `HolderStack`: the stack (`bpf_get_task_stack`, which
//! needs the trusted task pointer only an iterator has here) when the task
//! was off CPU before and after the walk and did not switch in between
//! (`nvcsw + nivcsw` unchanged), else why not. Every other task
//! costs one hash lookup. Attach target: `bpf_iter_task` (5.8+);
//! `bpf_get_task_stack` 5.9.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_get_task_stack, bpf_seq_write};
use remote_vm_common::holder::{HolderStack, STACK_FRAMES, StackStatus};

use super::{
    layout::{
        FRAME_RET_ADDR_OFF, TASK_CPU_OFF, TASK_NIVCSW_OFF, TASK_NVCSW_OFF, TASK_ON_CPU_OFF, TASK_PID_OFF, TASK_SCHED_CLASS_OFF,
        TASK_THREAD_SP_OFF, known,
    },
    maps::{IterTask, STACK_SCRATCH, STACK_WANTED, now, read_u32, read_u64},
};

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn holder_stacks(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel passes a `struct bpf_iter__task`.
    let ctx = unsafe { &*(ctx as *const IterTask) };
    let task = ctx.task;
    let pid_off = TASK_PID_OFF.load();
    if task.is_null() || !known(pid_off) {
        return 0;
    }
    let tid = read_u32(task as u64, pid_off);
    // SAFETY: a lookup in our own map.
    if unsafe { STACK_WANTED.get(&tid) }.is_none() {
        return 0;
    }
    let Some(s) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot of our per-CPU array (the iterator's program
    // runs with migration off; nothing else on this CPU uses the slot).
    let s = unsafe { &mut *s };
    s.tid = tid;
    s.frames = 0;
    s.switch_ip = 0;
    let (on_cpu_off, cpu_off, class_off) = (TASK_ON_CPU_OFF.load(), TASK_CPU_OFF.load(), TASK_SCHED_CLASS_OFF.load());
    s.cpu = if known(cpu_off) { read_u32(task as u64, cpu_off) } else { u32::MAX };
    s.sched_class = if known(class_off) { read_u64(task as u64, class_off) } else { 0 };
    s.status = if !known(on_cpu_off) {
        StackStatus::Unknown as u32
    } else if read_u32(task as u64, on_cpu_off) != 0 {
        StackStatus::Running as u32
    } else {
        let switched = switches(task as u64);
        // SAFETY: a trusted task pointer from the iterator; `ips` is map
        // memory of the size given.
        let n = unsafe {
            bpf_get_task_stack(task, s.ips.as_mut_ptr().cast(), (STACK_FRAMES * 8) as u32, 0)
        };
        // On a CPU now, or ran and switched out again meanwhile: the walk
        // may mix two stacks.
        if read_u32(task as u64, on_cpu_off) != 0 || switches(task as u64) != switched {
            StackStatus::RanDuring as u32
        } else if n <= 0 {
            StackStatus::Failed as u32
        } else {
            s.frames = (n as u32 / 8).min(STACK_FRAMES as u32);
            let (sp_off, ret_off) = (TASK_THREAD_SP_OFF.load(), FRAME_RET_ADDR_OFF.load());
            if known(sp_off) && known(ret_off) {
                s.switch_ip = read_u64(read_u64(task as u64, sp_off), ret_off);
            }
            StackStatus::Taken as u32
        }
    };
    s.observed_ns = now();
    // SAFETY: meta is the iterator's; `s` is map memory of this size.
    unsafe {
        bpf_seq_write((*ctx.meta).seq.cast(), (s as *const HolderStack).cast(), core::mem::size_of::<HolderStack>() as u32);
    }
    0
}

/// `task`'s voluntary and involuntary context switches so far (0 when their
/// offsets are unknown: then only `on_cpu` tells).
#[inline(always)]
fn switches(task: u64) -> u64 {
    let (v, i) = (TASK_NVCSW_OFF.load(), TASK_NIVCSW_OFF.load());
    if known(v) && known(i) { read_u64(task, v).wrapping_add(read_u64(task, i)) } else { 0 }
}
