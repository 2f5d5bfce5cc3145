//! What the holder of a target's mmap_lock is doing: its activity, read from
//! its saved user registers (`struct pt_regs` at the top of its kernel stack),
//! and the bounded operation (`op`) stalls are counted by.
//!
//! Pure Rust: the programs decide the activity and the op when they observe a
//! holder; the daemon names the system call and the range; unit tests drive
//! both without a kernel.

/// What a task was doing when observed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivityKind {
    /// Not looked at (no writer to look at, or the lock was free).
    NotObserved = 0,
    /// In a system call: `nr` and its first arguments are known.
    Syscall = 1,
    /// In an exception with an error code, in practice the page-fault path
    /// (`lock_mm_and_find_vma()` takes the lock for write to grow a stack).
    Fault = 2,
    /// A kernel thread (`PF_KTHREAD`, e.g. khugepaged): no user registers.
    Kthread = 3,
    /// A user task neither in a system call nor in a fault.
    Other = 4,
    /// The registers could not be read (offsets unknown here, or the read
    /// failed: the task was exiting).
    Unknown = 5,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 6] = [
        ActivityKind::NotObserved,
        ActivityKind::Syscall,
        ActivityKind::Fault,
        ActivityKind::Kthread,
        ActivityKind::Other,
        ActivityKind::Unknown,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            ActivityKind::NotObserved => "not_observed",
            ActivityKind::Syscall => "syscall",
            ActivityKind::Fault => "fault",
            ActivityKind::Kthread => "kthread",
            ActivityKind::Other => "other",
            ActivityKind::Unknown => "unknown",
        }
    }

    #[inline(always)]
    pub fn from_u32(v: u32) -> ActivityKind {
        if (v as usize) < ActivityKind::ALL.len() {
            // SAFETY: `repr(u32)` with the discriminants 0..ALL.len() (a test
            // holds it). No table lookup: the programs' verifier refuses an
            // index LLVM may add to a pointer before its bounds check.
            unsafe { core::mem::transmute::<u32, ActivityKind>(v) }
        } else {
            ActivityKind::Unknown
        }
    }
}

/// `-ENOSYS` as x86-64's entry code stores it in `pt_regs.ax` while a system
/// call runs (`entry_SYSCALL_64` pushes it; the return value replaces it only
/// when the call returns).
pub const AX_IN_SYSCALL: u64 = (-38i64) as u64;

/// `PF_KTHREAD` (include/linux/sched.h, a `#define` BTF does not carry;
/// 0x00200000 since 2.6.27, the same in 6.1, 6.12 and 7.3).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// How many system call arguments an observation keeps (x86-64: `di`, `si`,
/// `dx`): address, length and a third (protection, advice, new length).
pub const ACTIVITY_ARGS: usize = 3;

/// One observation of a task: what it was doing, from its registers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// `ActivityKind`.
    pub kind: u32,
    /// The system call number (`ActivityKind::Syscall`), else 0.
    pub nr: u32,
    /// Its first arguments (`ActivityKind::Syscall`), else 0s.
    pub args: [u64; ACTIVITY_ARGS],
}

/// A task's saved user registers, as far as an observation needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    /// `pt_regs.ax`.
    pub ax: u64,
    /// `pt_regs.orig_ax`: the system call number in a system call, the error
    /// code in an exception that has one, `~vector` in an interrupt.
    pub orig_ax: u64,
    pub args: [u64; ACTIVITY_ARGS],
}

impl Activity {
    /// What a task was doing: `kthread` from its `PF_KTHREAD` flag, else its
    /// registers (`None`: they could not be read). A system call is
    /// `ax == -ENOSYS && orig_ax >= 0`; otherwise a non-negative `orig_ax` is
    /// an exception's error code (the page fault), a negative one an
    /// interrupt's vector.
    ///
    /// The registers are the task's own: a program that puts -ENOSYS in `rax`
    /// and then faults is taken for system call 4 to 7 (the fault's error
    /// code). Only the holder itself can do that, to its own report.
    #[inline(always)]
    pub fn of(kthread: bool, regs: Option<Regs>) -> Activity {
        let mut a = Activity::default();
        if kthread {
            a.kind = ActivityKind::Kthread as u32;
            return a;
        }
        let Some(r) = regs else {
            a.kind = ActivityKind::Unknown as u32;
            return a;
        };
        let code = r.orig_ax as i64;
        if r.ax == AX_IN_SYSCALL && code >= 0 && code <= u32::MAX as i64 {
            a.kind = ActivityKind::Syscall as u32;
            a.nr = code as u32;
            a.args = r.args;
        } else if code >= 0 {
            a.kind = ActivityKind::Fault as u32;
        } else {
            a.kind = ActivityKind::Other as u32;
        }
        a
    }

    pub fn kind(&self) -> ActivityKind {
        ActivityKind::from_u32(self.kind)
    }
}

/// What the holder of a stalled wait was doing, as a bounded label: the
/// `op` of `remote_vm_stalls_total`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderOp {
    /// Not known: the lock's layout or the holder's registers are unknown
    /// here, it was free when looked at, or its writer was between setting
    /// the count and the owner. 0, so that zeroed state says "unknown".
    Unknown = 0,
    Mmap = 1,
    Munmap = 2,
    Mremap = 3,
    Mprotect = 4,
    Madvise = 5,
    Mlock = 6,
    Munlock = 7,
    Brk = 8,
    /// A writer in the page-fault path.
    Fault = 9,
    /// A kernel thread holds it for write (khugepaged, …).
    Kthread = 10,
    /// Reader-owned: no single holder (see the queued writer).
    Readers = 11,
    /// A writer in another system call (named in `/stalls`), or neither in a
    /// system call nor in a fault.
    Other = 12,
}

impl HolderOp {
    pub const COUNT: usize = 13;
    /// In discriminant order.
    pub const ALL: [HolderOp; HolderOp::COUNT] = [
        HolderOp::Unknown,
        HolderOp::Mmap,
        HolderOp::Munmap,
        HolderOp::Mremap,
        HolderOp::Mprotect,
        HolderOp::Madvise,
        HolderOp::Mlock,
        HolderOp::Munlock,
        HolderOp::Brk,
        HolderOp::Fault,
        HolderOp::Kthread,
        HolderOp::Readers,
        HolderOp::Other,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            HolderOp::Mmap => "mmap",
            HolderOp::Munmap => "munmap",
            HolderOp::Mremap => "mremap",
            HolderOp::Mprotect => "mprotect",
            HolderOp::Madvise => "madvise",
            HolderOp::Mlock => "mlock",
            HolderOp::Munlock => "munlock",
            HolderOp::Brk => "brk",
            HolderOp::Fault => "fault",
            HolderOp::Kthread => "kthread",
            HolderOp::Readers => "readers",
            HolderOp::Other => "other",
            HolderOp::Unknown => "unknown",
        }
    }

    #[inline(always)]
    pub fn from_u32(v: u32) -> HolderOp {
        if (v as usize) < HolderOp::COUNT {
            // SAFETY: `repr(u32)` with the discriminants 0..COUNT (a test
            // holds it); no table lookup, as above.
            unsafe { core::mem::transmute::<u32, HolderOp>(v) }
        } else {
            HolderOp::Unknown
        }
    }

    /// The op of a system call, by its name (the daemon's architecture table
    /// names it): the calls that take an mm's mmap_lock for write over a
    /// range, grouped; every other call is `Other`.
    pub fn of_syscall(name: &str) -> HolderOp {
        match name {
            "mmap" | "mmap2" | "remap_file_pages" | "map_shadow_stack" => HolderOp::Mmap,
            "munmap" => HolderOp::Munmap,
            "mremap" => HolderOp::Mremap,
            "mprotect" | "pkey_mprotect" | "mseal" => HolderOp::Mprotect,
            "madvise" | "process_madvise" => HolderOp::Madvise,
            "mlock" | "mlock2" | "mlockall" => HolderOp::Mlock,
            "munlock" | "munlockall" => HolderOp::Munlock,
            "brk" => HolderOp::Brk,
            _ => HolderOp::Other,
        }
    }

    /// The op a stall is counted under, from its holder's kind and the
    /// activity observed (`syscall_op`: the op of a system call number, from
    /// the table the daemon hands the programs).
    #[inline(always)]
    pub fn of(kind: crate::classify::HolderKind, activity: &Activity, syscall_op: impl FnOnce(u32) -> HolderOp) -> HolderOp {
        use crate::classify::HolderKind;
        match kind {
            HolderKind::Readers => HolderOp::Readers,
            HolderKind::None | HolderKind::Unknown => HolderOp::Unknown,
            HolderKind::Writer => match activity.kind() {
                ActivityKind::Syscall => syscall_op(activity.nr),
                ActivityKind::Fault => HolderOp::Fault,
                ActivityKind::Kthread => HolderOp::Kthread,
                ActivityKind::Other => HolderOp::Other,
                ActivityKind::NotObserved | ActivityKind::Unknown => HolderOp::Unknown,
            },
        }
    }
}

/// The system call numbers the op table covers (`SYSCALL_OPS` in the
/// programs): every x86-64 and arm64 number is below it.
pub const SYSCALL_OPS_LEN: usize = 512;

/// Which of a system call's arguments are an address and a length, by its
/// name (`None`: it passes no range in its first arguments).
pub fn range_args(name: &str) -> Option<(usize, usize)> {
    match name {
        "mmap" | "mmap2" | "munmap" | "mremap" | "mprotect" | "pkey_mprotect" | "madvise" | "mlock" | "mlock2" | "munlock"
        | "remap_file_pages" | "mseal" | "msync" | "mincore" | "mbind" | "map_shadow_stack" => Some((0, 1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::HolderKind;

    fn regs(ax: u64, orig_ax: u64) -> Option<Regs> {
        Some(Regs { ax, orig_ax, args: [0x7f00_0000_0000, 1 << 30, 3] })
    }

    #[test]
    fn activity_from_registers() {
        let a = Activity::of(false, regs(AX_IN_SYSCALL, 10));
        assert_eq!((a.kind(), a.nr, a.args), (ActivityKind::Syscall, 10, [0x7f00_0000_0000, 1 << 30, 3]));
        // A user page fault: orig_ax is the error code (4..=7), ax the user's rax.
        let f = Activity::of(false, regs(0x1234, 6));
        assert_eq!((f.kind(), f.nr, f.args), (ActivityKind::Fault, 0, [0; 3]));
        // An interrupt: orig_ax is ~vector.
        assert_eq!(Activity::of(false, regs(AX_IN_SYSCALL, !0xec)).kind(), ActivityKind::Other);
        // ax is -ENOSYS only while a system call runs: anything else with a
        // non-negative orig_ax is an exception's error code.
        assert_eq!(Activity::of(false, regs(0, 10)).kind(), ActivityKind::Fault);
        assert_eq!(Activity::of(true, regs(AX_IN_SYSCALL, 10)).kind(), ActivityKind::Kthread);
        assert_eq!(Activity::of(false, None).kind(), ActivityKind::Unknown);
        assert_eq!(Activity::default().kind(), ActivityKind::NotObserved);
    }

    #[test]
    fn ops_of_holders() {
        let op = |name: &'static str| move |_nr: u32| HolderOp::of_syscall(name);
        let sys = Activity::of(false, regs(AX_IN_SYSCALL, 10));
        assert_eq!(HolderOp::of(HolderKind::Writer, &sys, op("mprotect")), HolderOp::Mprotect);
        assert_eq!(HolderOp::of(HolderKind::Writer, &sys, op("pkey_mprotect")), HolderOp::Mprotect);
        assert_eq!(HolderOp::of(HolderKind::Writer, &sys, op("mlock2")), HolderOp::Mlock);
        assert_eq!(HolderOp::of(HolderKind::Writer, &sys, op("munlockall")), HolderOp::Munlock);
        assert_eq!(HolderOp::of(HolderKind::Writer, &sys, op("process_madvise")), HolderOp::Madvise);
        assert_eq!(HolderOp::of(HolderKind::Writer, &sys, op("process_mrelease")), HolderOp::Other);
        let fault = Activity::of(false, regs(0, 4));
        assert_eq!(HolderOp::of(HolderKind::Writer, &fault, op("read")), HolderOp::Fault);
        assert_eq!(HolderOp::of(HolderKind::Writer, &Activity::of(true, None), op("read")), HolderOp::Kthread);
        assert_eq!(HolderOp::of(HolderKind::Writer, &Activity::default(), op("read")), HolderOp::Unknown);
        // Reader-owned: the op of the lock, whatever the last reader does.
        assert_eq!(HolderOp::of(HolderKind::Readers, &sys, op("mprotect")), HolderOp::Readers);
        assert_eq!(HolderOp::of(HolderKind::None, &sys, op("mprotect")), HolderOp::Unknown);
        assert_eq!(HolderOp::of(HolderKind::Unknown, &sys, op("mprotect")), HolderOp::Unknown);
    }

    #[test]
    fn activity_kinds_round_trip() {
        for (i, k) in ActivityKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
            assert_eq!(ActivityKind::from_u32(i as u32), *k);
        }
        assert_eq!(ActivityKind::from_u32(99), ActivityKind::Unknown);
        assert_eq!(HolderOp::from_u32(99), HolderOp::Unknown);
    }

    #[test]
    fn op_values_round_trip_and_labels_are_distinct() {
        for (i, op) in HolderOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
            assert_eq!(HolderOp::from_u32(i as u32), *op);
        }
        for a in HolderOp::ALL {
            assert_eq!(HolderOp::ALL.iter().filter(|b| b.label() == a.label()).count(), 1, "{}", a.label());
        }
        assert_eq!(range_args("mprotect"), Some((0, 1)));
        assert_eq!(range_args("mlockall"), None);
    }
}

/// Frames kept of a holder's kernel stack (`bpf_get_task_stack`, innermost
/// first): a blocked system call's stack on x86-64 is 15 to 40 deep with
/// interrupt frames; a deeper one loses its outermost frames (the entry code).
pub const STACK_FRAMES: usize = 64;

/// What became of one look at a task's kernel stack (`HolderStack::status`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackStatus {
    /// Off CPU before and after the walk: `frames` return addresses.
    Taken = 0,
    /// On a CPU when looked at (`cpu`): a running task's stack changes under
    /// the unwinder, so none is taken.
    Running = 1,
    /// Off CPU before the walk but on one after it: the walk may mix frames.
    RanDuring = 2,
    /// `task_struct.on_cpu` is not known here.
    Unknown = 3,
    /// `bpf_get_task_stack` returned an error or nothing.
    Failed = 4,
}

impl StackStatus {
    pub fn from_u32(v: u32) -> StackStatus {
        match v {
            0 => StackStatus::Taken,
            1 => StackStatus::Running,
            2 => StackStatus::RanDuring,
            4 => StackStatus::Failed,
            _ => StackStatus::Unknown,
        }
    }
}

/// One look at a lock holder's kernel stack, taken by the `holder_stacks`
/// task iterator for the thread ids user space asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HolderStack {
    pub tid: u32,
    /// `StackStatus`.
    pub status: u32,
    /// The CPU the task last ran on (`task_struct.thread_info.cpu`;
    /// `u32::MAX`: unknown).
    pub cpu: u32,
    /// Return addresses in `ips` (0 unless `Taken`).
    pub frames: u32,
    /// `task_struct.sched_class`: a kernel address whose symbol user space
    /// knows (`fair_sched_class`, …), so it gives the KASLR slide. Never
    /// leaves the daemon.
    pub sched_class: u64,
    /// `bpf_ktime_get_ns()` of the look.
    pub observed_ns: u64,
    /// Where the task switched out (the return address on its
    /// `inactive_task_frame`: in `__schedule`), 0 unless `Taken`: it proves
    /// the symbols are this kernel's (`bpf_get_task_stack` leaves out the
    /// scheduler's own frames).
    pub switch_ip: u64,
    pub ips: [u64; STACK_FRAMES],
}

impl HolderStack {
    pub const ZERO: HolderStack = HolderStack {
        tid: 0,
        status: StackStatus::Unknown as u32,
        cpu: u32::MAX,
        frames: 0,
        sched_class: 0,
        observed_ns: 0,
        switch_ip: 0,
        ips: [0; STACK_FRAMES],
    };
}

/// How many holders' stacks one run of `holder_stacks` looks for at most
/// (`STACK_WANTED`'s size): the oldest waits' holders come first.
pub const STACKS_WANTED_MAX: u32 = 64;
