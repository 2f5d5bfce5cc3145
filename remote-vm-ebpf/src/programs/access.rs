//! `__access_remote_vm()` entry and exit, as fentry/fexit or kprobe/kretprobe.
//!
//! `__access_remote_vm(struct mm_struct *mm, unsigned long addr, void *buf,
//! int len, unsigned int gup_flags)`.
use aya_ebpf::{
    EbpfContext,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use aya_log_ebpf::debug;
use remote_vm_common::Point;

use super::maps::hit;

#[inline(always)]
fn on_entry<C: EbpfContext>(ctx: &C, addr: u64, len: i32, gup_flags: u32) {
    hit(Point::AccessRemoteVmEntry);
    debug!(
        ctx,
        "__access_remote_vm entry: tid {} addr {:x} len {} gup_flags {:x}",
        ctx.pid(),
        addr,
        len,
        gup_flags
    );
}

#[fentry]
pub fn access_entry_fentry(ctx: FEntryContext) -> i32 {
    on_entry(&ctx, ctx.arg(1), ctx.arg(3), ctx.arg(4));
    0
}

#[fexit]
pub fn access_exit_fexit(_ctx: FExitContext) -> i32 {
    hit(Point::AccessRemoteVmExit);
    0
}

#[kprobe]
pub fn access_entry_kprobe(ctx: ProbeContext) -> u32 {
    on_entry(
        &ctx,
        ctx.arg(1).unwrap_or(0),
        ctx.arg(3).unwrap_or(0),
        ctx.arg(4).unwrap_or(0),
    );
    0
}

#[kretprobe]
pub fn access_exit_kretprobe(_ctx: RetProbeContext) -> u32 {
    hit(Point::AccessRemoteVmExit);
    0
}
