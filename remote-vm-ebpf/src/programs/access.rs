//! `__access_remote_vm(mm, addr, buf, len, gup_flags)`: entry and exit of every
//! remote-memory access. Entry opens the per-thread `CallState`, exit classifies
//! the call and adds it to `STATS`.
//!
//! Hits: every entry counts in `HITS` as it runs (entries minus exits are
//! the calls in progress or whose end no program saw); an exit that ends a
//! call is counted by the call's own counters (`Stats::implied_hits`), the
//! others in `HITS`.
//!
//! Modes: fentry/fexit or kprobe/kretprobe on `__access_remote_vm`; where it is
//! inlined, the same on its callers `access_remote_vm(mm, …)` and
//! `access_process_vm(task, …)`. The programs themselves are the `entry_points!`
//! table at the end.
use aya_ebpf::{
    EbpfContext,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use aya_log_ebpf::debug;
use remote_vm_common::{
    Point,
    classify::{F_LOCKLESS, Flags, Path, ReadPath},
    stats::Counter,
};

use super::{
    layout::{FOLL_ANON, FOLL_WRITE, TASK_MM_OFF, known},
    maps::{CONTROL, Current, SELFTEST, hit, hit_n, is_selftest, now, read_u64, stats, tid},
};

#[inline(always)]
fn on_entry<C: EbpfContext>(ctx: &C, mm: u64, addr: u64, len: i32, gup_flags: u32) {
    hit(Point::AccessRemoteVmEntry);
    // (The thread id only where the log level lets the line through.)
    debug!(
        ctx,
        "__access_remote_vm entry: tid {} addr {:x} len {} gup_flags {:x}", tid(), addr, len, gup_flags
    );
    if mm == 0 {
        return;
    }
    let Some(Current { state, .. }) = Current::claim() else {
        if let Some(s) = stats() {
            s.add(Counter::StateUnavailable, 1);
        }
        return;
    };
    let flags = Flags {
        foll_write: FOLL_WRITE.load(),
        foll_anon: FOLL_ANON.load(),
    };
    let (selftest, reads, contention) = match CONTROL.get(0) {
        Some(c) => (is_selftest(c), ReadPath::from_u32(c.read_path), c.remote_waits_from_contention != 0),
        None => (false, ReadPath::Probed, false),
    };
    if let Some(walks) = state.begin(mm, addr, len, gup_flags, flags, selftest, reads, contention, now()) {
        // (The open call never finishes: its walks are counted here.)
        hit_n(Point::FolioWalkStartExit, u64::from(walks));
        if let Some(s) = stats() {
            s.add(Counter::MissedExits, 1);
        }
    }
}

#[inline(always)]
fn on_exit(ret: i64) {
    let Some(current) = Current::get() else {
        hit(Point::AccessRemoteVmExit);
        return;
    };
    let state = &mut *current.state;
    let t = now();
    if state.is_counted() {
        // The common case in the fewest instructions.
        if let Some(fast) = state.finish_fast(ret, t) {
            current.release();
            if let Some(s) = stats() {
                s.record_fast_read(&fast);
            }
            return;
        }
    }
    let selftest = !state.is_counted() && state.is_active();
    let finished = state.finish(ret, t);
    if selftest {
        // (`finish` left these as they were.)
        let walks = state.walks[0] + state.walks[1] + state.walks[2];
        let walk_runs = state.walk_runs();
        let lockless = u32::from(state.flags & F_LOCKLESS != 0);
        let vmas = state.vmas_locked;
        current.release();
        // (Not counted in `Stats`: the probe read's runs are hits here.)
        hit(Point::AccessRemoteVmExit);
        hit_n(Point::FolioWalkStartExit, u64::from(walk_runs));
        // (No `Option<Outcome>` is copied whole: its payload is undefined
        // when `None`, and the verifier refuses a copy of undefined
        // registers: "R3 !read_ok", seen on a kretprobe.)
        let path = match finished {
            Some(outcome) => outcome.path.map_or(0, |p: Path| p as u32 + 1),
            None => return,
        };
        if let Some(t) = SELFTEST.get_ptr_mut(0) {
            // SAFETY: the only writer is this thread's own probe read.
            unsafe {
                (*t).calls += 1;
                (*t).lockless += lockless;
                (*t).walks += walks;
                (*t).vmas += vmas;
                (*t).path = path;
                (*t).host_tid = tid() as u32;
            }
        }
        return;
    }
    // Everything needed is in `finished`: the slot may be another thread's next.
    current.release();
    if let Some(s) = stats() {
        match finished {
            None => s.add(Counter::MissedEntries, 1),
            Some(outcome) => s.record_call(&outcome),
        }
    }
}

/// Entry from a trampoline: `(mm or task, addr, buf, len, gup_flags)`.
#[inline(always)]
fn fentry_entry(ctx: &FEntryContext, mm: u64) {
    on_entry(ctx, mm, ctx.arg(1), ctx.arg(3), ctx.arg(4));
}

/// Entry from a kprobe: the same arguments from the registers.
#[inline(always)]
fn kprobe_entry(ctx: &ProbeContext, mm: u64) {
    on_entry(ctx, mm, ctx.arg(1).unwrap_or(0), ctx.arg(3).unwrap_or(0), ctx.arg(4).unwrap_or(0));
}

/// Where an fexit program finds the return value: after the function's
/// parameters, five for `__access_remote_vm` and both callers (one load,
/// where `bpf_get_func_ret()` costs a dozen instructions; `check` warns where
/// BTF gives another prototype).
const ACCESS_RET_ARG: usize = 5;

#[inline(always)]
fn fexit_exit(ctx: &FExitContext) {
    on_exit(i64::from(ctx.arg::<i32>(ACCESS_RET_ARG)));
}

#[inline(always)]
fn kretprobe_exit(ctx: &RetProbeContext) {
    on_exit(i64::from(ctx.ret::<i32>()));
}

/// `access_process_vm(task, …)` reads `task->mm` (it takes a reference itself).
#[inline(always)]
fn task_mm(task: u64) -> u64 {
    let off = TASK_MM_OFF.load();
    if task == 0 || !known(off) { 0 } else { read_u64(task, off) }
}

entry_points! {
    // __access_remote_vm itself.
    fentry access_entry_fentry(ctx) => fentry_entry(&ctx, ctx.arg(0));
    fexit access_exit_fexit(ctx) => fexit_exit(&ctx);
    kprobe access_entry_kprobe(ctx) => kprobe_entry(&ctx, ctx.arg(0).unwrap_or(0));
    kretprobe access_exit_kretprobe(ctx) => kretprobe_exit(&ctx);

    // The callers, for kernels where __access_remote_vm is inlined.
    fentry access_remote_vm_entry_fentry(ctx) => fentry_entry(&ctx, ctx.arg(0));
    fexit access_remote_vm_exit_fexit(ctx) => fexit_exit(&ctx);
    fentry access_process_vm_entry_fentry(ctx) => fentry_entry(&ctx, task_mm(ctx.arg(0)));
    fexit access_process_vm_exit_fexit(ctx) => fexit_exit(&ctx);
    kprobe access_remote_vm_entry_kprobe(ctx) => kprobe_entry(&ctx, ctx.arg(0).unwrap_or(0));
    kretprobe access_remote_vm_exit_kretprobe(ctx) => kretprobe_exit(&ctx);
    kprobe access_process_vm_entry_kprobe(ctx) =>
        kprobe_entry(&ctx, task_mm(ctx.arg(0).unwrap_or(0)));
    kretprobe access_process_vm_exit_kretprobe(ctx) => kretprobe_exit(&ctx);
}
