//! The lockless loop's steps: `lock_vma_under_rcu(mm, addr)` and
//! `folio_walk_start(fw, vma, addr, flags)` returns, and GUP calls.
//!
//! `lock_vma_under_rcu()` also runs on every page fault of every thread: its
//! programs count those as `context="other"` and return after one task-storage
//! lookup that is a NULL check for threads that never made a remote access.
use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use remote_vm_common::Point;

use super::{
    layout::{FW_LEVEL_OFF, FW_LEVEL_PMD, FW_LEVEL_PUD, FW_PAGE_OFF, VMA_VM_END_OFF, VMA_VM_OPS_OFF, known},
    maps::{Current, hit, now, load_u32, load_u64, read_u64, stats},
};

#[inline(always)]
fn on_lock_vma(mm: u64, addr: u64, vma: u64) {
    hit(Point::LockVmaUnderRcuExit);
    let locked = vma != 0;
    match Current::get().map(|c| c.state) {
        Some(state) if state.is_active() => {
            if state.is_counted() {
                if let Some(s) = stats() {
                    s.record_lock_vma(true, locked);
                }
            }
            // Only inside a remote access: the page-fault path pays nothing
            // more. A checked read: the return value of an fexit may be NULL
            // to the verifier, whatever the test above.
            let end_off = VMA_VM_END_OFF.load();
            let vm_end = if locked && known(end_off) { read_u64(vma, end_off) } else { 0 };
            state.lock_vma(mm, addr, locked, vm_end);
        }
        _ => {
            if let Some(s) = stats() {
                s.record_lock_vma(false, locked);
            }
        }
    }
}

entry_points! {
    fexit lock_vma_fexit(ctx) => on_lock_vma(ctx.arg(0), ctx.arg(1), ctx.ret::<u64>().unwrap_or(0));
}

// The kprobe pair is hand-written: the kprobe stashes the arguments for the
// kretprobe, more than one call, which the `entry_points!` table does not hold.

#[kprobe]
pub fn lock_vma_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(state) = Current::get().map(|c| c.state) {
        if state.is_active() {
            state.pending_ptr = ctx.arg(0).unwrap_or(0);
            state.pending_addr = ctx.arg(1).unwrap_or(0);
        }
    }
    0
}

#[kretprobe]
pub fn lock_vma_kretprobe(ctx: RetProbeContext) -> u32 {
    let (mm, addr) = match Current::get().map(|c| c.state) {
        Some(state) if state.is_active() => (state.pending_ptr, state.pending_addr),
        _ => (0, 0),
    };
    on_lock_vma(mm, addr, ctx.ret::<u64>());
    0
}

/// `fw->level` as our `Level` index (0 pte, 1 pmd, 2 pud).
#[inline(always)]
fn level_of<const DIRECT: bool>(fw: u64) -> u32 {
    let off = FW_LEVEL_OFF.load();
    if !known(off) {
        return 3;
    }
    let v = load_u32::<DIRECT>(fw, off);
    if v == FW_LEVEL_PMD.load() {
        1
    } else if v == FW_LEVEL_PUD.load() {
        2
    } else {
        0
    }
}

/// `DIRECT`: `fw` and `vma` are BTF-typed (fexit), see `load_u64`.
#[inline(always)]
fn on_folio_walk<const DIRECT: bool>(fw: u64, vma: u64, addr: u64, folio: u64) {
    // Inside a call, the call counts the run (`CallState::walk_runs`).
    let state = match Current::get().map(|c| c.state) {
        Some(state) if state.is_active() => state,
        _ => {
            hit(Point::FolioWalkStartExit);
            return;
        }
    };
    if folio == 0 {
        state.folio_walk(addr, false, 0, true);
        return;
    }
    let page_off = FW_PAGE_OFF.load();
    if known(page_off) && load_u64::<DIRECT>(fw, page_off) == 0 {
        state.walk_without_page(addr);
        return;
    }
    let ops_off = VMA_VM_OPS_OFF.load();
    // Unknown offset: treat as anonymous, so the FOLL_ANON metric never claims a gap.
    let anonymous = !known(ops_off) || load_u64::<DIRECT>(vma, ops_off) == 0;
    state.folio_walk(addr, true, level_of::<DIRECT>(fw), anonymous);
}

// (The folio returned follows the four parameters: one load, where
// `bpf_get_func_ret()` costs a dozen instructions.)
entry_points! {
    fexit folio_walk_fexit(ctx) => on_folio_walk::<true>(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(4));
}

// The kprobe pair is hand-written, as for lock_vma_under_rcu above.

#[kprobe]
pub fn folio_walk_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(state) = Current::get().map(|c| c.state) {
        if state.is_active() {
            state.pending_ptr = ctx.arg(0).unwrap_or(0);
            state.pending_vma = ctx.arg(1).unwrap_or(0);
            state.pending_addr = ctx.arg(2).unwrap_or(0);
        }
    }
    0
}

#[kretprobe]
pub fn folio_walk_kretprobe(ctx: RetProbeContext) -> u32 {
    let (fw, vma, addr) = match Current::get().map(|c| c.state) {
        Some(state) if state.is_active() => (state.pending_ptr, state.pending_vma, state.pending_addr),
        _ => (0, 0, 0),
    };
    on_folio_walk::<false>(fw, vma, addr, ctx.ret::<u64>());
    0
}

#[inline(always)]
fn on_gup() {
    hit(Point::GetUserPagesRemoteEntry);
    if let Some(state) = Current::get().map(|c| c.state) {
        state.gup(now);
    }
}

/// `expand_stack()` entered: inside a remote access, the slow path holds the
/// target's mmap_lock without a GUP call to show it (`CallState::expand_stack`).
#[inline(always)]
fn on_expand_stack() {
    hit(Point::MmapLockRemoteStart);
    if let Some(state) = Current::get().map(|c| c.state) {
        state.expand_stack(now);
    }
}

entry_points! {
    fentry remote_expand_stack_fentry(_ctx) => on_expand_stack();
    fentry gup_fentry(_ctx) => on_gup();
    kprobe gup_kprobe(_ctx) => on_gup();
}
