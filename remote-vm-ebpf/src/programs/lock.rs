//! mmap_lock acquisitions.
//!
//! - *remote*: the remote access's own acquisitions of the target's lock —
//!   `down_read_killable` (`mmap_read_lock_killable`, inlined) and
//!   `down_write_killable` (`expand_stack`) entry/exit, filtered to threads inside
//!   a remote access and to `sem == &target_mm->mmap_lock`; or the mmap_lock
//!   tracepoints filtered the same way.
//! - *host*: host-wide waits on a thread's own mm's mmap_lock — `lock:contention_begin`
//!   / `contention_end` (they fire only when a lock is contended), or, opt-in, the
//!   mmap_lock tracepoints (every acquisition; they tax every mmap_lock user).
use aya_ebpf::{bindings::{BPF_RB_NO_WAKEUP, task_struct}, macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
    bpf_probe_read_kernel, generated::bpf_task_pt_regs,
};
use remote_vm_common::{
    Interface, LCB_F_READ, LCB_F_WRITE, Point, StallEvent, Syscalls,
    classify::{Acquisition, CallState, F_ANON, F_WRITE, HolderKind, HolderSnap, decode_holder, lock_taken},
    holder::{Activity, HolderOp, PF_KTHREAD, Regs},
    stats::Counter,
};

use super::{
    layout::{
        FOLL_ANON, MM_ARG_END_OFF, MM_ARG_START_OFF, MM_ENV_END_OFF, MM_ENV_START_OFF, MM_MMAP_LOCK_OFF,
        MM_OWNER_OFF, PT_REGS_ARG0_OFF, PT_REGS_ARG1_OFF, PT_REGS_ARG2_OFF, PT_REGS_AX_OFF, PT_REGS_SYSCALL_OFF,
        RWSEM_COUNT_OFF, RWSEM_FIRST_WAITER_OFF, RWSEM_OWNER_OFF, RWSEM_WAIT_LIST_OFF, RWSEM_WAITING_FOR_WRITE,
        STALL_THRESHOLD_NS, SYSCALL_PTRACE, SYSCALLS_MEM, TASK_COMM_OFF, TASK_FLAGS_OFF, TASK_PID_OFF, TASK_STACK_OFF,
        TASK_TGID_OFF, WAITER_LIST_OFF, WAITER_TASK_OFF, WAITER_TYPE_OFF, known, syscall_op,
    },
    maps::{Current, STALL_EVENTS, WAIT_BEGUN, WAITS, current_mm, hit, load_u64, now, read_u32, read_u64, stats},
};

// --- remote -------------------------------------------------------------------

/// `sem` is about to be taken (`write`: for writing). `DIRECT`: `sem` is a
/// BTF-typed pointer (fentry, tp_btf) the program may load from directly (one
/// instruction) instead of calling `bpf_probe_read_kernel` (kprobes).
#[inline(always)]
fn remote_begin<const DIRECT: bool>(sem: u64, write: bool) {
    hit(Point::MmapLockRemoteStart);
    let Some(Current { state, .. }) = Current::get() else {
        return;
    };
    if !state.is_active() {
        return;
    }
    let target = is_target_lock(state, sem);
    if target {
        note_holder::<DIRECT>(state, sem);
    }
    state.lock_wait_begin(target, write, now());
}

/// The same with the tracepoints, which pass the mm itself (a BTF pointer).
#[inline(always)]
fn remote_begin_mm(mm: u64, write: bool) {
    hit(Point::MmapLockRemoteStart);
    let Some(Current { state, .. }) = Current::get() else {
        return;
    };
    if !state.is_active() {
        return;
    }
    let target = mm == state.mm;
    let off = MM_MMAP_LOCK_OFF.load();
    if target {
        if known(off) {
            note_holder::<true>(state, mm.wrapping_add(off));
        } else {
            // No lock to look at: say so (the state keeps an earlier call's).
            state.holder.kind = HolderKind::Unknown as u32;
            state.holder.op = HolderOp::Unknown as u32;
            state.cgroup_id = 0;
        }
    }
    state.lock_wait_begin(target, write, now());
}

/// Before a wait on the target's lock `sem` begins: who holds it, and, when
/// it is taken, the reader's cgroup (for the task iterator's report).
#[inline(always)]
fn note_holder<const DIRECT: bool>(state: &mut CallState, sem: u64) {
    if !observe_holder::<DIRECT>(sem, &mut state.holder) {
        state.holder.kind = HolderKind::None as u32;
        state.holder.op = HolderOp::Unknown as u32;
    } else if state.holder.kind == HolderKind::Writer as u32 || state.holder.writer_waiting != 0 {
        // It is about to sleep: wake the watcher (a full ring only means the
        // watcher has not read the last ones yet, which wake it as well).
        let _ = WAIT_BEGUN.output::<u64>(&state.holder.observed_ns, 0);
    }
    state.cgroup_id = if state.holder.kind == HolderKind::None as u32 {
        0
    } else {
        // SAFETY: no preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    };
}

/// Who holds `sem` now, from its lock words, written to `h` when the lock is
/// taken (or its layout unknown): the identity, what a writer is doing and
/// the waiter queue are read only then. `false`: free, `h` untouched. Written
/// in place (the programs' stack has no room for a copy beside an event).
#[inline(always)]
pub(super) fn observe_holder<const DIRECT: bool>(sem: u64, h: &mut HolderSnap) -> bool {
    let (count_off, owner_off) = (RWSEM_COUNT_OFF.load(), RWSEM_OWNER_OFF.load());
    if !known(count_off) || !known(owner_off) {
        *h = HolderSnap::default();
        h.kind = HolderKind::Unknown as u32;
        return true;
    }
    // The count word alone says whether the lock is taken: on a free lock,
    // that one read is all (the owner word is read only when it is taken).
    let count = load_u64::<DIRECT>(sem, count_off);
    if !lock_taken(count) {
        return false;
    }
    let (kind, exact, task) = decode_holder(count, read_u64(sem, owner_off));
    h.kind = kind as u32;
    h.exact = u32::from(exact);
    h.observed_ns = now();
    (h.tgid, h.tid, h.comm) = task_identity(task);
    h.activity = if kind == HolderKind::Writer { observe(task) } else { Activity::default() };
    h.op = HolderOp::of(kind, &h.activity, syscall_op) as u32;
    let queued = first_queued_writer(sem);
    h.writer_waiting = u32::from(queued.is_some());
    let queued = queued.unwrap_or(0);
    (h.queued_tgid, h.queued_tid, h.queued_comm) = task_identity(queued);
    h.queued = observe(queued);
    true
}

/// What `task` is doing: `kthread`, or from its saved user registers
/// (not observed for no task, 0).
#[inline(always)]
fn observe(task: u64) -> Activity {
    if task == 0 {
        return Activity::default();
    }
    let flags_off = TASK_FLAGS_OFF.load();
    let kthread = known(flags_off) && read_u32(task, flags_off) & PF_KTHREAD != 0;
    Activity::of(kthread, if kthread { None } else { user_regs(task) })
}

/// `task`'s saved user registers (`None`: unknown here, or unreadable). Its
/// `pt_regs` lie at the same distance from its stack's base as the current
/// task's (`task_pt_regs()`: the top of the stack, less the padding), so that
/// distance is measured on the current task (`bpf_task_pt_regs` needs a
/// trusted pointer, which the holder's — a word of the lock — is not).
#[inline(always)]
fn user_regs(task: u64) -> Option<Regs> {
    let stack_off = TASK_STACK_OFF.load();
    let offs = [PT_REGS_AX_OFF.load(), PT_REGS_SYSCALL_OFF.load(), PT_REGS_ARG0_OFF.load(), PT_REGS_ARG1_OFF.load(), PT_REGS_ARG2_OFF.load()];
    if !known(stack_off) || offs.iter().any(|o| !known(*o)) {
        return None;
    }
    // SAFETY: no preconditions; the current task is trusted.
    let me = unsafe { bpf_get_current_task_btf() };
    // SAFETY: a trusted task pointer.
    let my_regs = as_scalar(unsafe { bpf_task_pt_regs(me) } as u64);
    let (my_stack, stack) = (read_u64(me as u64, stack_off), read_u64(task, stack_off));
    if my_regs == 0 || my_stack == 0 || stack == 0 || my_regs < my_stack {
        return None;
    }
    let regs = stack.wrapping_add(my_regs - my_stack);
    let word = |off: u64| -> Option<u64> {
        // SAFETY: bpf_probe_read_kernel checks the address.
        unsafe { bpf_probe_read_kernel(regs.wrapping_add(off) as *const u64) }.ok()
    };
    Some(Regs {
        ax: word(offs[0])?,
        orig_ax: word(offs[1])?,
        args: [word(offs[2])?, word(offs[3])?, word(offs[4])?],
    })
}

/// A pointer's value as a plain number: the verifier allows no arithmetic
/// between a typed pointer and an unbounded number (the distance above is
/// one), so the value is copied through a checked read of the stack slot
/// holding it, which the verifier types as data.
#[inline(always)]
fn as_scalar(p: u64) -> u64 {
    let slot = p;
    // SAFETY: reads this function's own stack slot.
    unsafe { bpf_probe_read_kernel(core::ptr::from_ref(&slot)) }.unwrap_or(0)
}

/// The task first in `sem`'s queue when it waits to write: `Some(task)`
/// (0 when its `task` field is unknown), `None` when the first waits to read
/// or nobody waits. 7.3 keeps a pointer to it (`first_waiter`), earlier
/// kernels a list (`wait_list`, empty when it points to itself). Read without
/// `wait_lock`: a waiter that just left may be seen; every read is checked.
#[inline(always)]
fn first_queued_writer(sem: u64) -> Option<u64> {
    let (first_off, list_off) = (RWSEM_FIRST_WAITER_OFF.load(), RWSEM_WAIT_LIST_OFF.load());
    let (w_list_off, w_type_off) = (WAITER_LIST_OFF.load(), WAITER_TYPE_OFF.load());
    if !known(w_type_off) {
        return None;
    }
    let waiter = if known(first_off) {
        read_u64(sem, first_off)
    } else if known(list_off) && known(w_list_off) {
        let head = sem.wrapping_add(list_off);
        let next = read_u64(head, 0);
        if next == 0 || next == head { 0 } else { next.wrapping_sub(w_list_off) }
    } else {
        0
    };
    if waiter == 0 || read_u32(waiter, w_type_off) != RWSEM_WAITING_FOR_WRITE.load() {
        return None;
    }
    let task_off = WAITER_TASK_OFF.load();
    Some(if known(task_off) { read_u64(waiter, task_off) } else { 0 })
}

/// Whether `lock` is the mmap_lock of the call's target (never where the
/// offset is unknown).
#[inline(always)]
fn is_target_lock(state: &CallState, lock: u64) -> bool {
    let off = MM_MMAP_LOCK_OFF.load();
    known(off) && lock == state.mm.wrapping_add(off)
}

#[inline(always)]
fn remote_end(acquired: bool) {
    hit(Point::MmapLockRemoteEnd);
    if let Some(Current { state, .. }) = Current::get() {
        wait_ended(state, acquired);
    }
}

/// The wait in progress (if any) ended: counted, and a stall emitted.
#[inline(always)]
fn wait_ended(state: &mut CallState, acquired: bool) {
    if let Some(a) = state.lock_wait_end(acquired, now()) {
        if state.is_counted() {
            let threshold = STALL_THRESHOLD_NS.load();
            if let Some(s) = stats() {
                s.record_remote_wait(&a, threshold, state.holder.op);
            }
            if a.wait_ns >= threshold {
                emit_stall(state, &a);
            }
        }
    }
}

/// `mm_struct` field at `off`, 0 when unknown.
#[inline(always)]
fn mm_field(mm: u64, off: u64) -> u64 {
    if known(off) { read_u64(mm, off) } else { 0 }
}

#[inline(always)]
fn read_comm(task: u64, comm_off: u64) -> [u8; 16] {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(task.wrapping_add(comm_off) as *const [u8; 16]) }.unwrap_or([0; 16])
}

/// The system call `task` is in (`u32::MAX` when unknown).
#[inline(always)]
fn syscall_nr(task: *mut task_struct) -> u32 {
    let off = PT_REGS_SYSCALL_OFF.load();
    if !known(off) {
        return u32::MAX;
    }
    // SAFETY: `task` is a trusted BTF task pointer (the current task or the
    // iterator's); the helper returns its user registers.
    let regs = unsafe { bpf_task_pt_regs(task) } as u64;
    if regs == 0 { u32::MAX } else { read_u32(regs, off) }
}

/// What a wait on the target's lock is about, for a stall event or a wait in
/// progress: the target, the interface (`reader`: the waiting task), the
/// holder, the lock mode and the direction. The reader's identity and the
/// times are the caller's.
#[inline(always)]
pub(super) fn describe(state: &CallState, reader: *mut task_struct, lock_write: bool) -> StallEvent {
    let mut e = StallEvent {
        end_ns: 0,
        wait_ns: 0,
        cgroup_id: 0,
        reader_tgid: 0,
        reader_tid: 0,
        target_tgid: 0,
        lock_write: u32::from(lock_write),
        access_write: u32::from(state.flags & F_WRITE != 0),
        interface: 0,
        failed: 0,
        _pad: 0,
        reader_comm: [0; 16],
        target_comm: [0; 16],
        holder: state.holder,
    };
    let mm = state.mm;
    let arg = (mm_field(mm, MM_ARG_START_OFF.load()), mm_field(mm, MM_ARG_END_OFF.load()));
    let env = (mm_field(mm, MM_ENV_START_OFF.load()), mm_field(mm, MM_ENV_END_OFF.load()));
    let anon = (FOLL_ANON.load() != 0).then_some(state.flags & F_ANON != 0);
    let syscalls = Syscalls {
        ptrace: SYSCALL_PTRACE.load(),
        mem: SYSCALLS_MEM.load(),
    };
    e.interface = Interface::of(state.start_addr, anon, arg, env, syscall_nr(reader), &syscalls) as u32;
    let owner = mm_field(mm, MM_OWNER_OFF.load());
    let (tgid_off, comm_off) = (TASK_TGID_OFF.load(), TASK_COMM_OFF.load());
    if owner != 0 && known(tgid_off) && known(comm_off) {
        let tgid = read_u32(owner, tgid_off);
        e.target_tgid = if tgid == u32::MAX { 0 } else { tgid };
        e.target_comm = read_comm(owner, comm_off);
    }
    e
}

/// One stall event: who waited, on whose lock, how, for how long. Only here,
/// after a wait of at least the threshold, is anything read beyond the counters.
#[inline(always)]
fn emit_stall(state: &CallState, a: &Acquisition) {
    // SAFETY: no preconditions.
    let me = unsafe { bpf_get_current_task_btf() };
    let mut e = describe(state, me, a.write);
    let pid_tgid = bpf_get_current_pid_tgid();
    e.end_ns = now();
    e.wait_ns = a.wait_ns;
    // SAFETY: no preconditions.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.reader_tgid = (pid_tgid >> 32) as u32;
    e.reader_tid = pid_tgid as u32;
    e.reader_comm = bpf_get_current_comm().unwrap_or([0; 16]);
    e.failed = u32::from(a.failed);
    // No wakeup: the daemon drains the buffer every `STALL_POLL_MS`.
    if STALL_EVENTS.output::<StallEvent>(&e, u64::from(BPF_RB_NO_WAKEUP)).is_err() {
        if let Some(s) = stats() {
            s.add(Counter::StallEventsDropped, 1);
        }
    }
}

/// A task's identity: tgid, tid, comm (zeros for no task, 0, and when the
/// offsets are unknown).
#[inline(always)]
pub(super) fn task_identity(task: u64) -> (u32, u32, [u8; 16]) {
    let (pid_off, tgid_off, comm_off) = (TASK_PID_OFF.load(), TASK_TGID_OFF.load(), TASK_COMM_OFF.load());
    if task == 0 || !known(pid_off) || !known(tgid_off) || !known(comm_off) {
        return (0, 0, [0; 16]);
    }
    (read_u32(task, tgid_off), read_u32(task, pid_off), read_comm(task, comm_off))
}

// The mmap_lock tracepoints changed their arguments: 6.12 passes
// `(mm, memcg_path, write[, success])`, 6.18 `(mm, write[, success])`. tp_btf
// arguments must be read at constant offsets, so each program exists once per
// layout (`W` = position of `write`) and the daemon attaches the one BTF names.

#[inline(always)]
fn tp_bool<const N: usize>(ctx: &BtfTracePointContext) -> bool {
    let v: u64 = ctx.arg(N);
    v & 0xff != 0
}

entry_points! {
    fentry down_read_fentry(ctx) => remote_begin::<true>(ctx.arg(0), false);
    fexit down_read_fexit(ctx) => remote_end(ctx.ret::<i32>().unwrap_or(-1) == 0);

    // The same programs again for the opt-in read+write modes (aya loads each
    // program once, so a mode cannot share them with another).
    fentry down_read_fentry_rw(ctx) => remote_begin::<true>(ctx.arg(0), false);
    fexit down_read_fexit_rw(ctx) => remote_end(ctx.ret::<i32>().unwrap_or(-1) == 0);
    kprobe down_read_kprobe_rw(ctx) => remote_begin::<false>(ctx.arg(0).unwrap_or(0), false);
    kretprobe down_read_kretprobe_rw(ctx) => remote_end(ctx.ret::<i32>() == 0);

    fentry down_write_fentry(ctx) => remote_begin::<true>(ctx.arg(0), true);
    fexit down_write_fexit(ctx) => remote_end(ctx.ret::<i32>().unwrap_or(-1) == 0);

    kprobe down_read_kprobe(ctx) => remote_begin::<false>(ctx.arg(0).unwrap_or(0), false);
    kretprobe down_read_kretprobe(ctx) => remote_end(ctx.ret::<i32>() == 0);
    kprobe down_write_kprobe(ctx) => remote_begin::<false>(ctx.arg(0).unwrap_or(0), true);
    kretprobe down_write_kretprobe(ctx) => remote_end(ctx.ret::<i32>() == 0);

    // The mmap_lock tracepoints, one program per argument layout (see `tp_bool`).
    btf_tracepoint(function = "mmap_lock_start_locking")
    remote_start_locking_tp_w1(ctx) => remote_begin_mm(ctx.arg(0), tp_bool::<1>(&ctx));
    btf_tracepoint(function = "mmap_lock_start_locking")
    remote_start_locking_tp_w2(ctx) => remote_begin_mm(ctx.arg(0), tp_bool::<2>(&ctx));

    // A downgrade also reports acquire_returned, with no start: lock_wait_end
    // ignores it (no wait in progress).
    btf_tracepoint(function = "mmap_lock_acquire_returned")
    remote_acquire_returned_tp_w1(ctx) => remote_end(tp_bool::<2>(&ctx));
    btf_tracepoint(function = "mmap_lock_acquire_returned")
    remote_acquire_returned_tp_w2(ctx) => remote_end(tp_bool::<3>(&ctx));
}

/// `lock:contention_begin(lock, flags)`: a wait inside a remote access for its
/// target's mmap_lock, for reading, begins. Only contended locks get here;
/// the access's exit counts an acquisition that never did as a wait of 0
/// (`CallState::finish`). Write waits (`expand_stack`) are not counted: their
/// uncontended acquisitions are not seen in this mode.
#[inline(always)]
fn remote_contention_begin(lock: u64, flags: u32) {
    hit(Point::MmapLockRemoteStart);
    if flags & LCB_F_READ == 0 {
        return;
    }
    let Some(Current { state, .. }) = Current::get() else {
        return;
    };
    if !state.is_active() || !is_target_lock(state, lock) {
        return;
    }
    // (`lock` is a `void *`: no direct loads through it.)
    note_holder::<false>(state, lock);
    state.lock_wait_begin(true, false, now());
}

/// `lock:contention_end(lock, ret)`: that wait ended (`ret` 0: acquired). The
/// lock is compared: the semaphore's own `wait_lock` may be contended inside
/// the wait, and its events come in between.
#[inline(always)]
fn remote_contention_end(lock: u64, ret: i32) {
    hit(Point::MmapLockRemoteEnd);
    if let Some(Current { state, .. }) = Current::get() {
        if is_target_lock(state, lock) {
            wait_ended(state, ret == 0);
        }
    }
}

#[btf_tracepoint(function = "contention_begin")]
pub fn remote_contention_begin_tp(ctx: BtfTracePointContext) -> i32 {
    let flags: u32 = ctx.arg(1);
    remote_contention_begin(ctx.arg(0), flags);
    0
}

#[btf_tracepoint(function = "contention_end")]
pub fn remote_contention_end_tp(ctx: BtfTracePointContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    remote_contention_end(ctx.arg(0), ret);
    0
}

// --- host ---------------------------------------------------------------------

#[inline(always)]
fn host_begin(lock: u64, write: bool) {
    hit(Point::MmapLockHostStart);
    let off = MM_MMAP_LOCK_OFF.load();
    if !known(off) {
        return;
    }
    let mm = current_mm();
    if mm == 0 || lock != mm.wrapping_add(off) {
        return;
    }
    if let Some(w) = WAITS.current(true) {
        w.lock = lock;
        w.start_ns = now();
        w.write = u32::from(write);
    }
}

/// `failures_mean_killed`: the contention tracepoints end a wait with an error
/// only when the waiter was killed; the mmap_lock tracepoints also report every
/// failed trylock, so there a failure is dropped (not a wait, not a kill).
#[inline(always)]
fn host_end(lock: u64, acquired: bool, failures_mean_killed: bool) {
    hit(Point::MmapLockHostEnd);
    let Some(w) = WAITS.current(false) else {
        return;
    };
    if w.lock == 0 || w.lock != lock {
        return;
    }
    let a = Acquisition {
        write: w.write != 0,
        wait_ns: now().saturating_sub(w.start_ns),
        failed: !acquired,
    };
    w.lock = 0;
    if !acquired && !failures_mean_killed {
        return;
    }
    if let Some(s) = stats() {
        s.record_acquisition(&a, true);
    }
}

// The contention tracepoints are hand-written: their bodies are more than one
// call (typed reads of the arguments first), which the `entry_points!` table
// does not hold (see its doc).

#[btf_tracepoint(function = "contention_begin")]
pub fn host_contention_begin_tp(ctx: BtfTracePointContext) -> i32 {
    let flags: u32 = ctx.arg(1);
    host_begin(ctx.arg(0), flags & LCB_F_WRITE != 0);
    0
}

#[btf_tracepoint(function = "contention_end")]
pub fn host_contention_end_tp(ctx: BtfTracePointContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    host_end(ctx.arg(0), ret == 0, true);
    0
}

#[inline(always)]
fn host_start_locking<const W: usize>(ctx: &BtfTracePointContext) {
    let mm: u64 = ctx.arg(0);
    // The same key as the contention mode: the lock's address.
    host_begin(mm.wrapping_add(MM_MMAP_LOCK_OFF.load()), tp_bool::<W>(ctx));
}

#[inline(always)]
fn host_acquire_returned<const S: usize>(ctx: &BtfTracePointContext) {
    let mm: u64 = ctx.arg(0);
    host_end(mm.wrapping_add(MM_MMAP_LOCK_OFF.load()), tp_bool::<S>(ctx), false);
}

entry_points! {
    btf_tracepoint(function = "mmap_lock_start_locking")
    host_start_locking_tp_w1(ctx) => host_start_locking::<1>(&ctx);
    btf_tracepoint(function = "mmap_lock_start_locking")
    host_start_locking_tp_w2(ctx) => host_start_locking::<2>(&ctx);
    btf_tracepoint(function = "mmap_lock_acquire_returned")
    host_acquire_returned_tp_w1(ctx) => host_acquire_returned::<2>(&ctx);
    btf_tracepoint(function = "mmap_lock_acquire_returned")
    host_acquire_returned_tp_w2(ctx) => host_acquire_returned::<3>(&ctx);
}
