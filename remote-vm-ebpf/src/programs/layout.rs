//! Globals patched by the daemon before load (`EbpfLoader::override_global`) with
//! values from the running kernel's BTF. Rust eBPF has no CO-RE, so no kernel
//! struct offset is compiled in. `UNKNOWN_OFFSET` means "not in BTF".
use aya_ebpf::Global;
use remote_vm_common::{
    MEM_SYSCALLS, UNKNOWN_OFFSET,
    holder::{HolderOp, SYSCALL_OPS_LEN},
};

/// `offsetof(struct mm_struct, mmap_lock)`.
#[unsafe(no_mangle)]
pub static MM_MMAP_LOCK_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `offsetof(struct task_struct, mm)`.
#[unsafe(no_mangle)]
pub static TASK_MM_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `offsetof(struct folio_walk, page)` and `(…, level)`.
#[unsafe(no_mangle)]
pub static FW_PAGE_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static FW_LEVEL_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `offsetof(struct vm_area_struct, vm_ops)` (NULL `vm_ops`: anonymous VMA).
#[unsafe(no_mangle)]
pub static VMA_VM_OPS_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `offsetof(struct vm_area_struct, vm_end)`.
#[unsafe(no_mangle)]
pub static VMA_VM_END_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `enum folio_walk_level` values of PMD and PUD (PTE is everything else).
#[unsafe(no_mangle)]
pub static FW_LEVEL_PMD: Global<u32> = Global::new(1);
#[unsafe(no_mangle)]
pub static FW_LEVEL_PUD: Global<u32> = Global::new(2);
/// `FOLL_WRITE` and `FOLL_ANON`.
#[unsafe(no_mangle)]
pub static FOLL_WRITE: Global<u32> = Global::new(1);
#[unsafe(no_mangle)]
pub static FOLL_ANON: Global<u32> = Global::new(0);

/// `offsetof(struct mm_struct, owner)` (CONFIG_MEMCG), `arg_start`, `arg_end`,
/// `env_start`, `env_end`; `offsetof(struct task_struct, tgid)`, `(…, comm)`.
#[unsafe(no_mangle)]
pub static MM_OWNER_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static MM_ARG_START_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static MM_ARG_END_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static MM_ENV_START_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static MM_ENV_END_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static TASK_TGID_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static TASK_COMM_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);

/// `offsetof(struct rw_semaphore, count)`, `(…, owner)` (unknown on PREEMPT_RT,
/// whose rw_semaphore is an rwbase_rt), `offsetof(struct task_struct, pid)`.
#[unsafe(no_mangle)]
pub static RWSEM_COUNT_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static RWSEM_OWNER_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static TASK_PID_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `offsetof(struct task_struct, __state)` (`state` before 5.14).
#[unsafe(no_mangle)]
pub static TASK_STATE_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);

/// The rwsem's waiter queue: `offsetof(struct rw_semaphore, wait_list)` (a
/// `list_head`, up to 7.2) or `(…, first_waiter)` (a pointer, 7.3);
/// `offsetof(struct rwsem_waiter, list)` and `(…, type)`; the value of
/// `RWSEM_WAITING_FOR_WRITE` (`u32::MAX`: unknown).
#[unsafe(no_mangle)]
pub static RWSEM_WAIT_LIST_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static RWSEM_FIRST_WAITER_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static WAITER_LIST_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static WAITER_TYPE_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static RWSEM_WAITING_FOR_WRITE: Global<u32> = Global::new(u32::MAX);

/// Where `struct pt_regs` keeps the system call number, and the numbers that
/// tell `ptrace` and `/proc/PID/mem` apart (the daemon's architecture's;
/// `u32::MAX`: unknown).
#[unsafe(no_mangle)]
pub static PT_REGS_SYSCALL_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static SYSCALL_PTRACE: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
pub static SYSCALLS_MEM: Global<[u32; MEM_SYSCALLS]> = Global::new([u32::MAX; MEM_SYSCALLS]);

/// What a holder is doing, read from its saved user registers:
/// `offsetof(struct task_struct, flags)` (`PF_KTHREAD`) and `(…, stack)` (its
/// `pt_regs` lie where the current task's do, relative to its stack),
/// `offsetof(struct pt_regs, ax)` and of the first three system call
/// arguments (`di`, `si`, `dx`): x86-64 only, unknown elsewhere;
/// `offsetof(struct rwsem_waiter, task)` for the queued writer.
#[unsafe(no_mangle)]
pub static TASK_FLAGS_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static TASK_STACK_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static PT_REGS_AX_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static PT_REGS_ARG0_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static PT_REGS_ARG1_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static PT_REGS_ARG2_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static WAITER_TASK_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// A holder's kernel stack (`holder_stacks`): `offsetof(struct task_struct,
/// on_cpu)`, of its CPU (`thread_info.cpu`, x86-64), and of `sched_class`.
#[unsafe(no_mangle)]
pub static TASK_ON_CPU_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static TASK_CPU_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static TASK_SCHED_CLASS_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `offsetof(struct task_struct, thread.sp)` and `offsetof(struct
/// inactive_task_frame, ret_addr)`: where a task off CPU switched out.
#[unsafe(no_mangle)]
pub static TASK_THREAD_SP_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static FRAME_RET_ADDR_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `offsetof(struct task_struct, nvcsw)` and `(…, nivcsw)`: its context
/// switches, which must not change while its stack is read.
#[unsafe(no_mangle)]
pub static TASK_NVCSW_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
#[unsafe(no_mangle)]
pub static TASK_NIVCSW_OFF: Global<u64> = Global::new(UNKNOWN_OFFSET);
/// `HolderOp` of each system call number (the daemon's architecture table;
/// `Other` beyond it). Read one byte at a time (`syscall_op`).
#[unsafe(no_mangle)]
pub static SYSCALL_OPS: Global<[u8; SYSCALL_OPS_LEN]> = Global::new([HolderOp::Other as u8; SYSCALL_OPS_LEN]);

/// The `HolderOp` of system call `nr`.
#[inline(always)]
pub fn syscall_op(nr: u32) -> HolderOp {
    // The index is masked and the load made before the range is checked: a
    // check first would let LLVM drop the mask as redundant, and 6.1's
    // verifier does not carry a 32-bit comparison's bound to the pointer
    // addition ("math between map_value pointer and register with unbounded
    // min value"). The length is a power of two.
    const _: () = assert!(SYSCALL_OPS_LEN.is_power_of_two());
    let i = nr as usize & (SYSCALL_OPS_LEN - 1);
    // SAFETY: `Global` is `repr(transparent)` over the array; `i` is in bounds.
    let v = unsafe { core::ptr::read_volatile(core::ptr::from_ref(&SYSCALL_OPS).cast::<u8>().add(i)) };
    if nr as usize >= SYSCALL_OPS_LEN { HolderOp::Other } else { HolderOp::from_u32(u32::from(v)) }
}

/// A remote access's wait for the target's mmap_lock at least this long is a
/// stall (`[stalls] threshold_seconds` in the config).
#[unsafe(no_mangle)]
pub static STALL_THRESHOLD_NS: Global<u64> = Global::new(100_000_000);

pub fn known(off: u64) -> bool {
    off != UNKNOWN_OFFSET
}
