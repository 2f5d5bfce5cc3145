//! What the programs need to know about the running kernel, read from its BTF:
//! struct field offsets, enum values, tracepoint argument positions, and which
//! functions exist. Each item is a value or the reason it is unknown.
use super::btf::{Btf, KIND_INT};

pub type Item<T> = Result<T, String>;

#[derive(Debug, Clone)]
pub struct Layout {
    /// `offsetof(struct mm_struct, mmap_lock)`.
    pub mm_mmap_lock: Item<u64>,
    /// `offsetof(struct task_struct, mm)`.
    pub task_mm: Item<u64>,
    /// `offsetof(struct folio_walk, page)`, `(…, level)`.
    pub fw_page: Item<u64>,
    pub fw_level: Item<u64>,
    /// `FW_LEVEL_PMD`, `FW_LEVEL_PUD`.
    pub fw_levels: Item<(u32, u32)>,
    /// `offsetof(struct vm_area_struct, vm_ops)`.
    pub vma_vm_ops: Item<u64>,
    /// `offsetof(struct vm_area_struct, vm_end)` (a VMA step that crosses it).
    pub vma_vm_end: Item<u64>,
    /// `FOLL_WRITE` (falls back to 0x1, its value in every kernel, with a note).
    pub foll_write: u32,
    pub foll_write_note: Option<String>,
    /// `FOLL_ANON` (its value changed across kernels: no fallback).
    pub foll_anon: Item<u32>,
    /// For stall events: `mm_struct.owner` (CONFIG_MEMCG), `arg_start`,
    /// `arg_end`, `env_start`, `env_end`; `task_struct.tgid`, `comm`. Each is
    /// optional: an event leaves out what is unknown.
    pub stall_ids: StallIds,
    /// Argument positions of `write` and `success` in the mmap_lock tracepoints.
    pub mmap_lock_tp_args: Item<(u32, u32)>,
    /// The lockless path's functions exist in this kernel.
    pub has_lock_vma_under_rcu: bool,
    pub has_folio_walk_start: bool,
    /// `tlb_remove_table_sync_one()` is only built with MMU_GATHER_RCU_TABLE_FREE.
    pub has_rcu_table_free: bool,
    /// The kernel's stack unwinder, from `struct unwind_state`'s members.
    pub unwinder: Item<Unwinder>,
    /// Whether these come from BTF (else kallsyms).
    pub from_btf: bool,
    /// Whether the `has_*` answers mean anything: BTF, or a readable
    /// /proc/kallsyms (hidden under `ProcSubset=pid`: then nothing is known).
    pub functions_known: bool,
    /// Where the kernel's BTF differs from what the classifier assumes of the
    /// lockless loop's functions (`check` warns), each said in a sentence.
    pub assumptions: Vec<String>,
}

/// `folio_walk_start()` as the walk programs read it: the walk (its `page` and
/// `level`), the VMA, the address, and the folio returned (6.12 and 7.3).
pub const FOLIO_WALK_START: &str =
    "struct folio *folio_walk_start(struct folio_walk *, struct vm_area_struct *, long unsigned int, folio_walk_flags_t)";
/// `lock_vma_under_rcu()` as the VMA step's programs read it. (BTF names C's
/// types as the compiler does: `long unsigned int`.)
pub const LOCK_VMA_UNDER_RCU: &str = "struct vm_area_struct *lock_vma_under_rcu(struct mm_struct *, long unsigned int)";

/// `__access_remote_vm()` and its callers as the entry and exit programs read
/// them: the exit's fexit finds the return value after the five parameters.
pub const ACCESS_REMOTE_VM: [(&str, &str); 3] = [
    ("__access_remote_vm", "int __access_remote_vm(struct mm_struct *, long unsigned int, void *, int, unsigned int)"),
    ("access_remote_vm", "int access_remote_vm(struct mm_struct *, long unsigned int, void *, int, unsigned int)"),
    ("access_process_vm", "int access_process_vm(struct task_struct *, long unsigned int, void *, int, unsigned int)"),
];

/// What differs from the classifier's assumptions: the prototypes of the
/// functions the programs read, and `enum folio_walk_level` (PTE 0; PMD and
/// PUD read from BTF).
fn assumptions(btf: &Btf) -> Vec<String> {
    let mut out = Vec::new();
    let read = [("folio_walk_start", FOLIO_WALK_START), ("lock_vma_under_rcu", LOCK_VMA_UNDER_RCU)];
    for (function, assumed) in read.into_iter().chain(ACCESS_REMOTE_VM) {
        if !btf.has_function(function) {
            continue;
        }
        match btf.function_signature(function) {
            Ok(sig) if sig == assumed => {}
            Ok(sig) => out.push(format!(
                "{function}() is `{sig}` in BTF, not `{assumed}` as the classifier assumes: its programs may read the wrong arguments"
            )),
            Err(e) => out.push(format!("{function}()'s prototype cannot be read from BTF ({e})")),
        }
    }
    if btf.has_function("folio_walk_start") {
        match btf.enum_value("FW_LEVEL_PTE") {
            Ok(0) => {}
            Ok(v) => out.push(format!("FW_LEVEL_PTE is {v} in BTF, not 0 as the classifier assumes")),
            Err(_) => out.push("enum folio_walk_level has no FW_LEVEL_PTE in BTF: walk levels may be misread".into()),
        }
    }
    out
}

/// x86-64's stack unwinder (`CONFIG_UNWINDER_*`), told apart by the members
/// each gives `struct unwind_state` (arch/x86/include/asm/unwind.h): ORC's
/// `signal`, the frame-pointer unwinder's `got_irq`, neither for the guess
/// unwinder (which reports every word on the stack that looks like a text
/// address: stale frames included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwinder {
    Orc,
    FramePointer,
    Guess,
}

impl Unwinder {
    fn from_btf(btf: &Btf) -> Item<Unwinder> {
        btf.field_offset("unwind_state", "stack_mask")?;
        Ok(if btf.field_offset("unwind_state", "signal").is_ok() {
            Unwinder::Orc
        } else if btf.field_offset("unwind_state", "got_irq").is_ok() {
            Unwinder::FramePointer
        } else {
            Unwinder::Guess
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Unwinder::Orc => "ORC",
            Unwinder::FramePointer => "frame pointer",
            Unwinder::Guess => "guess",
        }
    }

    /// Only ORC unwinds a blocked task's stack reliably (the kernel's own
    /// `HAVE_RELIABLE_STACKTRACE` on x86-64 needs it).
    pub fn reliable(self) -> bool {
        self == Unwinder::Orc
    }
}

#[derive(Debug, Clone)]
pub struct StallIds {
    pub mm_owner: Item<u64>,
    pub mm_arg_start: Item<u64>,
    pub mm_arg_end: Item<u64>,
    pub mm_env_start: Item<u64>,
    pub mm_env_end: Item<u64>,
    pub task_tgid: Item<u64>,
    pub task_comm: Item<u64>,
    pub task_pid: Item<u64>,
    /// `struct rw_semaphore` `count` and `owner` (absent on PREEMPT_RT).
    pub rwsem_count: Item<u64>,
    pub rwsem_owner: Item<u64>,
    /// The queue of waiters: `wait_list` (a `list_head`, up to 7.2) or
    /// `first_waiter` (a `struct rwsem_waiter *`, 7.3); one of them is known.
    pub rwsem_wait_list: Item<u64>,
    pub rwsem_first_waiter: Item<u64>,
    /// `struct rwsem_waiter` `list` and `type`.
    pub waiter_list: Item<u64>,
    pub waiter_type: Item<u64>,
    /// Where `struct pt_regs` keeps the system call number (`orig_ax` on
    /// x86-64, `syscallno` on arm64).
    pub pt_regs_syscall: Item<u64>,
    /// `RWSEM_WAITING_FOR_WRITE` (`enum rwsem_waiter_type`).
    pub waiting_for_write: Item<u32>,
    /// `task_struct.__state` (5.14 on; `state` before): a wait in progress is
    /// reported only while its thread sleeps.
    pub task_state: Item<u64>,
    /// What a holder is doing: `task_struct.flags` (`PF_KTHREAD`) and
    /// `stack`, `pt_regs.ax` and the first three system call arguments
    /// (x86-64: `di`, `si`, `dx`; unknown on other architectures), and
    /// `rwsem_waiter.task` for the queued writer.
    pub task_flags: Item<u64>,
    pub task_stack: Item<u64>,
    pub pt_regs_ax: Item<u64>,
    pub pt_regs_args: [Item<u64>; 3],
    pub waiter_task: Item<u64>,
    /// A holder's kernel stack: `task_struct.on_cpu`, its CPU
    /// (`thread_info.cpu` inside it, or `task_struct.cpu`) and `sched_class`.
    pub task_on_cpu: Item<u64>,
    pub task_cpu: Item<u64>,
    pub task_sched_class: Item<u64>,
    /// Where a task off CPU switched out: `task_struct.thread.sp` and
    /// `inactive_task_frame.ret_addr` (x86-64).
    pub task_thread_sp: Item<u64>,
    pub frame_ret_addr: Item<u64>,
    /// `task_struct.nvcsw`, `nivcsw`: a task that switched during the walk.
    pub task_nvcsw: Item<u64>,
    pub task_nivcsw: Item<u64>,
}

/// `struct pt_regs`' members with `-ENOSYS` during a system call and the
/// first three arguments: x86-64's (elsewhere a holder's activity is unknown).
const PT_REGS_AX: Option<&str> = if cfg!(target_arch = "x86_64") { Some("ax") } else { None };
const PT_REGS_ARGS: Option<[&str; 3]> = if cfg!(target_arch = "x86_64") { Some(["di", "si", "dx"]) } else { None };

fn pt_regs_member(btf: &Btf, member: Option<&str>) -> Item<u64> {
    match member {
        Some(m) => btf.field_offset("pt_regs", m),
        None => Err("not read on this architecture".to_string()),
    }
}

/// `struct pt_regs`' member with the system call number on this architecture.
const PT_REGS_SYSCALL: &str = if cfg!(target_arch = "aarch64") { "syscallno" } else { "orig_ax" };

impl StallIds {
    fn from_btf(btf: &Btf) -> StallIds {
        StallIds {
            mm_owner: btf.field_offset("mm_struct", "owner"),
            mm_arg_start: btf.field_offset("mm_struct", "arg_start"),
            mm_arg_end: btf.field_offset("mm_struct", "arg_end"),
            mm_env_start: btf.field_offset("mm_struct", "env_start"),
            mm_env_end: btf.field_offset("mm_struct", "env_end"),
            task_tgid: btf.field_offset("task_struct", "tgid"),
            task_comm: btf.field_offset("task_struct", "comm"),
            task_pid: btf.field_offset("task_struct", "pid"),
            rwsem_count: btf.field_offset("rw_semaphore", "count"),
            rwsem_owner: btf.field_offset("rw_semaphore", "owner"),
            rwsem_wait_list: btf.field_offset("rw_semaphore", "wait_list"),
            rwsem_first_waiter: btf.field_offset("rw_semaphore", "first_waiter"),
            waiter_list: btf.field_offset("rwsem_waiter", "list"),
            waiter_type: btf.field_offset("rwsem_waiter", "type"),
            pt_regs_syscall: btf.field_offset("pt_regs", PT_REGS_SYSCALL),
            waiting_for_write: btf.enum_value("RWSEM_WAITING_FOR_WRITE").map(|v| v as u32),
            task_state: btf.field_offset("task_struct", "__state").or_else(|e| btf.field_offset("task_struct", "state").map_err(|_| e)),
            task_flags: btf.field_offset("task_struct", "flags"),
            task_stack: btf.field_offset("task_struct", "stack"),
            pt_regs_ax: pt_regs_member(btf, PT_REGS_AX),
            pt_regs_args: [0, 1, 2].map(|i| pt_regs_member(btf, PT_REGS_ARGS.map(|a| a[i]))),
            waiter_task: btf.field_offset("rwsem_waiter", "task"),
            task_on_cpu: btf.field_offset("task_struct", "on_cpu"),
            task_cpu: btf
                .field_offset("task_struct", "thread_info")
                .and_then(|ti| btf.field_offset("thread_info", "cpu").map(|cpu| ti + cpu))
                .or_else(|e| btf.field_offset("task_struct", "cpu").map_err(|_| e)),
            task_sched_class: btf.field_offset("task_struct", "sched_class"),
            task_thread_sp: btf
                .field_offset("task_struct", "thread")
                .and_then(|t| btf.field_offset("thread_struct", "sp").map(|sp| t + sp)),
            frame_ret_addr: btf.field_offset("inactive_task_frame", "ret_addr"),
            task_nvcsw: btf.field_offset("task_struct", "nvcsw"),
            task_nivcsw: btf.field_offset("task_struct", "nivcsw"),
        }
    }

    pub fn unknown() -> StallIds {
        let no = || Err("no BTF".to_string());
        StallIds {
            mm_owner: no(),
            mm_arg_start: no(),
            mm_arg_end: no(),
            mm_env_start: no(),
            mm_env_end: no(),
            task_tgid: no(),
            task_comm: no(),
            task_pid: no(),
            rwsem_count: no(),
            rwsem_owner: no(),
            rwsem_wait_list: no(),
            rwsem_first_waiter: no(),
            waiter_list: no(),
            waiter_type: no(),
            pt_regs_syscall: no(),
            waiting_for_write: Err("no BTF".to_string()),
            task_state: no(),
            task_flags: no(),
            task_stack: no(),
            pt_regs_ax: no(),
            pt_regs_args: [no(), no(), no()],
            waiter_task: no(),
            task_on_cpu: no(),
            task_cpu: no(),
            task_sched_class: no(),
            task_thread_sp: no(),
            frame_ret_addr: no(),
            task_nvcsw: no(),
            task_nivcsw: no(),
        }
    }

    /// (global name, item) pairs, for the programs and `check`.
    pub fn named(&self) -> [(&'static str, &'static str, &Item<u64>); 30] {
        [
            ("MM_OWNER_OFF", "mm_struct.owner", &self.mm_owner),
            ("MM_ARG_START_OFF", "mm_struct.arg_start", &self.mm_arg_start),
            ("MM_ARG_END_OFF", "mm_struct.arg_end", &self.mm_arg_end),
            ("MM_ENV_START_OFF", "mm_struct.env_start", &self.mm_env_start),
            ("MM_ENV_END_OFF", "mm_struct.env_end", &self.mm_env_end),
            ("TASK_TGID_OFF", "task_struct.tgid", &self.task_tgid),
            ("TASK_COMM_OFF", "task_struct.comm", &self.task_comm),
            ("TASK_PID_OFF", "task_struct.pid", &self.task_pid),
            ("RWSEM_COUNT_OFF", "rw_semaphore.count", &self.rwsem_count),
            ("RWSEM_OWNER_OFF", "rw_semaphore.owner", &self.rwsem_owner),
            ("RWSEM_WAIT_LIST_OFF", "rw_semaphore.wait_list", &self.rwsem_wait_list),
            ("RWSEM_FIRST_WAITER_OFF", "rw_semaphore.first_waiter", &self.rwsem_first_waiter),
            ("WAITER_LIST_OFF", "rwsem_waiter.list", &self.waiter_list),
            ("WAITER_TYPE_OFF", "rwsem_waiter.type", &self.waiter_type),
            ("PT_REGS_SYSCALL_OFF", if cfg!(target_arch = "aarch64") { "pt_regs.syscallno" } else { "pt_regs.orig_ax" }, &self.pt_regs_syscall),
            ("TASK_STATE_OFF", "task_struct.__state", &self.task_state),
            ("TASK_FLAGS_OFF", "task_struct.flags", &self.task_flags),
            ("TASK_STACK_OFF", "task_struct.stack", &self.task_stack),
            ("PT_REGS_AX_OFF", "pt_regs.ax", &self.pt_regs_ax),
            ("PT_REGS_ARG0_OFF", "pt_regs.di", &self.pt_regs_args[0]),
            ("PT_REGS_ARG1_OFF", "pt_regs.si", &self.pt_regs_args[1]),
            ("PT_REGS_ARG2_OFF", "pt_regs.dx", &self.pt_regs_args[2]),
            ("WAITER_TASK_OFF", "rwsem_waiter.task", &self.waiter_task),
            ("TASK_ON_CPU_OFF", "task_struct.on_cpu", &self.task_on_cpu),
            ("TASK_CPU_OFF", "task_struct.thread_info.cpu", &self.task_cpu),
            ("TASK_SCHED_CLASS_OFF", "task_struct.sched_class", &self.task_sched_class),
            ("TASK_THREAD_SP_OFF", "task_struct.thread.sp", &self.task_thread_sp),
            ("FRAME_RET_ADDR_OFF", "inactive_task_frame.ret_addr", &self.frame_ret_addr),
            ("TASK_NVCSW_OFF", "task_struct.nvcsw", &self.task_nvcsw),
            ("TASK_NIVCSW_OFF", "task_struct.nivcsw", &self.task_nivcsw),
        ]
    }
}

impl StallIds {
    /// What stall events and waits in progress cannot name on this kernel.
    pub fn missing(&self) -> Vec<&'static str> {
        let queue = ["rw_semaphore.wait_list", "rw_semaphore.first_waiter"];
        let mut out: Vec<&str> = self
            .named()
            .iter()
            .filter(|(_, name, v)| v.is_err() && !queue.contains(name))
            .map(|(_, n, _)| *n)
            .collect();
        // Either form of the waiter queue will do.
        if self.rwsem_wait_list.is_err() && self.rwsem_first_waiter.is_err() {
            out.push("rw_semaphore.wait_list/first_waiter");
        }
        if self.waiting_for_write.is_err() {
            out.push("RWSEM_WAITING_FOR_WRITE");
        }
        out
    }

    /// The `check` line.
    fn line(&self) -> String {
        let unknown = self.missing();
        if unknown.is_empty() {
            "btf: stall event identities (mm_struct.owner, arg/env ranges, task_struct.pid/tgid/comm/__state/flags/stack/on_cpu/cpu/sched_class/thread.sp/nvcsw/nivcsw, inactive_task_frame.ret_addr, rw_semaphore words and waiter queue, pt_regs system call number and arguments) = all found".to_string()
        } else {
            format!("btf: stall event identities: unknown {} (events leave them out)", unknown.join(", "))
        }
    }
}

const FOLL_WRITE_DEFAULT: u32 = 0x1;

impl Layout {
    pub fn from_btf(btf: &Btf) -> Layout {
        let foll_write = btf.enum_value("FOLL_WRITE");
        Layout {
            mm_mmap_lock: btf.field_offset("mm_struct", "mmap_lock"),
            task_mm: btf.field_offset("task_struct", "mm"),
            fw_page: btf.field_offset("folio_walk", "page"),
            fw_level: btf.field_offset("folio_walk", "level"),
            fw_levels: btf
                .enum_value("FW_LEVEL_PMD")
                .and_then(|pmd| btf.enum_value("FW_LEVEL_PUD").map(|pud| (pmd as u32, pud as u32))),
            vma_vm_ops: btf.field_offset("vm_area_struct", "vm_ops"),
            vma_vm_end: btf.field_offset("vm_area_struct", "vm_end"),
            assumptions: assumptions(btf),
            foll_write: foll_write.as_ref().map_or(FOLL_WRITE_DEFAULT, |v| *v as u32),
            foll_write_note: foll_write
                .err()
                .map(|why| format!("{why}; using 0x1, its value in every kernel")),
            foll_anon: btf.enum_value("FOLL_ANON").map(|v| v as u32),
            stall_ids: StallIds::from_btf(btf),
            mmap_lock_tp_args: mmap_lock_tp_args(btf),
            has_lock_vma_under_rcu: btf.has_function("lock_vma_under_rcu"),
            has_folio_walk_start: btf.has_function("folio_walk_start"),
            has_rcu_table_free: btf.has_function("tlb_remove_table_sync_one"),
            unwinder: Unwinder::from_btf(btf),
            from_btf: true,
            functions_known: true,
        }
    }

    /// Without BTF nothing is known; kallsyms still tells which functions exist.
    pub fn without_btf() -> Layout {
        fn no<T>() -> Item<T> {
            Err("no BTF".to_string())
        }
        let syms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let has = |name: &str| syms.lines().any(|l| l.split_whitespace().nth(2) == Some(name));
        Layout {
            mm_mmap_lock: no(),
            task_mm: no(),
            fw_page: no(),
            fw_level: no(),
            fw_levels: no(),
            vma_vm_ops: no(),
            vma_vm_end: no(),
            assumptions: Vec::new(),
            foll_write: FOLL_WRITE_DEFAULT,
            foll_write_note: Some("no BTF; using 0x1, its value in every kernel".into()),
            foll_anon: no(),
            stall_ids: StallIds::unknown(),
            mmap_lock_tp_args: no(),
            has_lock_vma_under_rcu: has("lock_vma_under_rcu"),
            has_folio_walk_start: has("folio_walk_start"),
            has_rcu_table_free: has("tlb_remove_table_sync_one"),
            unwinder: no(),
            from_btf: false,
            functions_known: !syms.is_empty(),
        }
    }

    /// The kernel has the functions of the lockless read path.
    pub fn has_lockless_path(&self) -> bool {
        self.has_lock_vma_under_rcu && self.has_folio_walk_start
    }

    /// `check` lines: every item and its value or why it is unknown.
    pub fn lines(&self) -> Vec<String> {
        fn show<T: std::fmt::Debug>(name: &str, v: &Item<T>) -> String {
            match v {
                Ok(v) => format!("btf: {name} = {v:?}"),
                Err(why) => format!("btf: {name} unknown ({why})"),
            }
        }
        let mut out = vec![
            show("mm_struct.mmap_lock", &self.mm_mmap_lock),
            show("task_struct.mm", &self.task_mm),
            show("folio_walk.page", &self.fw_page),
            show("folio_walk.level", &self.fw_level),
            show("FW_LEVEL_PMD/PUD", &self.fw_levels),
            show("vm_area_struct.vm_ops", &self.vma_vm_ops),
            show("vm_area_struct.vm_end", &self.vma_vm_end),
        ];
        out.push(match &self.foll_write_note {
            None => format!("btf: FOLL_WRITE = {:#x}", self.foll_write),
            Some(note) => format!("btf: FOLL_WRITE = {:#x} ({note})", self.foll_write),
        });
        out.push(show("FOLL_ANON", &self.foll_anon));
        out.push(show("mmap_lock tracepoint (write, success) args", &self.mmap_lock_tp_args));
        out.push(self.stall_ids.line());
        out.push(match &self.unwinder {
            Ok(u) if u.reliable() => format!("btf: kernel stack unwinder = {} (reliable)", u.label()),
            Ok(u) => format!("btf: kernel stack unwinder = {} (not reliable: holders' stacks not shown)", u.label()),
            Err(why) => format!("btf: kernel stack unwinder unknown ({why}; holders' stacks not shown)"),
        });
        out.push(format!(
            "btf: lockless path functions: lock_vma_under_rcu={} folio_walk_start={}",
            self.has_lock_vma_under_rcu, self.has_folio_walk_start
        ));
        out
    }
}

/// Positions of `bool write` and `bool success` (after `__data`): the first and
/// second `_Bool` of `mmap_lock_acquire_returned`; `mmap_lock_start_locking` must
/// have `write` at the same position.
fn mmap_lock_tp_args(btf: &Btf) -> Item<(u32, u32)> {
    let bools = |tp: &str| -> Item<Vec<u32>> {
        Ok(btf
            .tracepoint_args(tp)?
            .iter()
            .enumerate()
            .filter(|(_, t)| t.kind == KIND_INT && (t.name == "_Bool" || t.name == "bool"))
            .map(|(i, _)| i as u32)
            .collect())
    };
    let start = bools("mmap_lock_start_locking")?;
    let acquired = bools("mmap_lock_acquire_returned")?;
    match (start.as_slice(), acquired.as_slice()) {
        ([w], [w2, s]) if w == w2 => Ok((*w, *s)),
        _ => Err(format!(
            "unexpected mmap_lock tracepoint signature (bool args at {start:?} and {acquired:?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::{KIND_STRUCT, tests::Builder};

    fn tracepoints(with_memcg_path: bool) -> Btf<'static> {
        let mut b = Builder::new();
        let boolean = b.int("_Bool", 1);
        let bool_t = b.typedef("bool", boolean);
        let void_ptr = b.ptr(0);
        let char_t = b.int("char", 1);
        let char_ptr = b.ptr(char_t);
        let mm = b.structure(KIND_STRUCT, "mm_struct", 8, &[]);
        let mm_ptr = b.ptr(mm);
        let mut start = vec![void_ptr, mm_ptr];
        let mut acquired = vec![void_ptr, mm_ptr];
        if with_memcg_path {
            start.push(char_ptr);
            acquired.push(char_ptr);
        }
        start.push(bool_t);
        acquired.extend([bool_t, bool_t]);
        let p = b.proto(0, &start);
        let fp = b.ptr(p);
        b.typedef("btf_trace_mmap_lock_start_locking", fp);
        let p = b.proto(0, &acquired);
        let fp = b.ptr(p);
        b.typedef("btf_trace_mmap_lock_acquire_returned", fp);
        Btf::parse(b.build().leak()).unwrap()
    }

    #[test]
    fn mmap_lock_tracepoint_args_follow_the_kernel() {
        // 6.12: (mm, memcg_path, write[, success]); 6.18: (mm, write[, success]).
        assert_eq!(mmap_lock_tp_args(&tracepoints(true)), Ok((2, 3)));
        assert_eq!(mmap_lock_tp_args(&tracepoints(false)), Ok((1, 2)));
    }

    #[test]
    fn a_function_of_another_shape_is_said() {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let vma = b.structure(KIND_STRUCT, "vm_area_struct", 8, &[]);
        let mm = b.structure(KIND_STRUCT, "mm_struct", 8, &[]);
        let (vma_ptr, mm_ptr) = (b.ptr(vma), b.ptr(mm));
        // A third argument the programs would not know about.
        let proto = b.proto(vma_ptr, &[mm_ptr, ulong, ulong]);
        b.func("lock_vma_under_rcu", proto);
        let data = b.build();
        let l = Layout::from_btf(&Btf::parse(&data).unwrap());
        assert_eq!(
            l.assumptions,
            vec![format!(
                "lock_vma_under_rcu() is `struct vm_area_struct *lock_vma_under_rcu(struct mm_struct *, long unsigned int, long unsigned int)` in BTF, not `{LOCK_VMA_UNDER_RCU}` as the classifier assumes: its programs may read the wrong arguments"
            )]
        );
        // As assumed: nothing said.
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let vma = b.structure(KIND_STRUCT, "vm_area_struct", 8, &[]);
        let mm = b.structure(KIND_STRUCT, "mm_struct", 8, &[]);
        let (vma_ptr, mm_ptr) = (b.ptr(vma), b.ptr(mm));
        let proto = b.proto(vma_ptr, &[mm_ptr, ulong]);
        b.func("lock_vma_under_rcu", proto);
        let data = b.build();
        assert!(Layout::from_btf(&Btf::parse(&data).unwrap()).assumptions.is_empty());
    }

    #[test]
    fn the_exit_reads_the_return_after_five_parameters() {
        // `__access_remote_vm` as assumed: nothing said; with a sixth
        // parameter, the exit's context word 5 would be it, not the return.
        let shaped = |extra: bool| {
            let mut b = Builder::new();
            let (ulong, int, uint) = (b.int("long unsigned int", 8), b.int("int", 4), b.int("unsigned int", 4));
            let mm = b.structure(KIND_STRUCT, "mm_struct", 8, &[]);
            let (mm_ptr, void_ptr) = (b.ptr(mm), b.ptr(0));
            let mut params = vec![mm_ptr, ulong, void_ptr, int, uint];
            if extra {
                params.push(uint);
            }
            let proto = b.proto(int, &params);
            b.func("__access_remote_vm", proto);
            Layout::from_btf(&Btf::parse(b.build().leak()).unwrap()).assumptions
        };
        assert_eq!(shaped(false), Vec::<String>::new());
        let said = shaped(true);
        assert_eq!(said.len(), 1);
        assert!(said[0].starts_with("__access_remote_vm() is `int __access_remote_vm(struct mm_struct *, long unsigned int, void *, int, unsigned int, unsigned int)` in BTF"), "{said:?}");
    }

    #[test]
    fn missing_items_say_why() {
        let l = Layout::from_btf(&tracepoints(false));
        assert_eq!(l.mm_mmap_lock, Err("struct mm_struct has no field mmap_lock in BTF".into()));
        assert_eq!(l.task_mm, Err("struct task_struct not in BTF".into()));
        assert_eq!(l.foll_write, 1);
        assert_eq!(
            l.foll_write_note.as_deref(),
            Some("enumerator FOLL_WRITE not in BTF; using 0x1, its value in every kernel")
        );
        assert!(!l.has_lockless_path());
    }

    /// What each kernel's source says the layout is (kernels' BTF cut down
    /// by `cargo xtask btf-testdata`).
    #[test]
    fn layouts_of_real_kernels_follow_their_source() {
        use crate::kernel::btf::tests::testdata;
        for name in ["shared-6.12", "shared-7.3", "debian-6.1"] {
            let l = Layout::from_btf(&testdata(name));
            let (v6_1, v7_3) = (name == "debian-6.1", name == "shared-7.3");
            // memcg_path left the mmap_lock tracepoints' arguments in 6.14.
            assert_eq!(l.mmap_lock_tp_args, Ok(if v7_3 { (1, 2) } else { (2, 3) }), "{name}");
            // lock_vma_under_rcu came in 6.4, folio_walk_start in 6.12.
            assert_eq!((l.has_lock_vma_under_rcu, l.has_folio_walk_start), (!v6_1, !v6_1), "{name}");
            assert_eq!(l.has_lockless_path(), !v6_1, "{name}");
            // FOLL_* became an enum in 6.2 (FOLL_WRITE: 0x1 in every kernel).
            assert_eq!(l.foll_write, 1, "{name}");
            assert_eq!(l.foll_write_note.is_some(), v6_1, "{name}");
            assert_eq!(l.foll_anon.is_ok(), !v6_1, "{name}");
            // enum { FW_LEVEL_PTE, FW_LEVEL_PMD, FW_LEVEL_PUD }.
            assert_eq!(l.fw_levels, if v6_1 { Err("enumerator FW_LEVEL_PMD not in BTF".into()) } else { Ok((1, 2)) }, "{name}");
            assert_eq!(l.fw_page.is_ok(), !v6_1, "{name}");
            // Both functions and the walk levels as the classifier assumes (6.1 has neither).
            assert_eq!(l.assumptions, Vec::<String>::new(), "{name}");
            for item in [&l.mm_mmap_lock, &l.task_mm, &l.vma_vm_ops, &l.vma_vm_end] {
                assert!(item.is_ok(), "{name}: {item:?}");
            }
            // The shared images are built with CONFIG_UNWINDER_GUESS, Debian's with ORC.
            assert_eq!(l.unwinder, Ok(if v6_1 { Unwinder::Orc } else { Unwinder::Guess }), "{name}");
            let ids = &l.stall_ids;
            // thread_info is task_struct's first member on x86-64
            // (THREAD_INFO_IN_TASK), its cpu a few words into it.
            assert!(ids.task_cpu.clone().unwrap() < 64, "{name}: {:?}", ids.task_cpu);
            assert!(ids.task_on_cpu.is_ok() && ids.task_sched_class.is_ok(), "{name}");
            // struct inactive_task_frame { r15, r14, r13, r12, bx, bp, ret_addr } on x86-64.
            assert_eq!(ids.frame_ret_addr, Ok(48), "{name}");
            assert!(ids.task_thread_sp.is_ok(), "{name}");
            // unsigned long nvcsw; unsigned long nivcsw;
            assert_eq!(ids.task_nivcsw.clone().unwrap(), ids.task_nvcsw.clone().unwrap() + 8, "{name}");
            // unsigned long arg_start, arg_end, env_start, env_end;
            let arg = ids.mm_arg_start.clone().unwrap();
            assert_eq!([&ids.mm_arg_end, &ids.mm_env_start, &ids.mm_env_end].map(|i| i.clone().unwrap()), [arg + 8, arg + 16, arg + 24], "{name}");
            // pid_t pid; pid_t tgid;
            assert_eq!(ids.task_tgid.clone().unwrap(), ids.task_pid.clone().unwrap() + 4, "{name}");
            // struct rw_semaphore { atomic_long_t count; atomic_long_t owner; …
            assert_eq!((ids.rwsem_count.clone(), ids.rwsem_owner.clone()), (Ok(0), Ok(8)), "{name}");
            // The waiter queue: a list_head up to 7.2, a first_waiter pointer in 7.3.
            assert_eq!((ids.rwsem_wait_list.is_ok(), ids.rwsem_first_waiter.is_ok()), (!v7_3, v7_3), "{name}");
            // struct rwsem_waiter { struct list_head list; struct task_struct *task;
            // enum rwsem_waiter_type type; … }, RWSEM_WAITING_FOR_WRITE first.
            assert_eq!((ids.waiter_list.clone(), ids.waiter_type.clone()), (Ok(0), Ok(24)), "{name}");
            assert_eq!(ids.waiting_for_write, Ok(0), "{name}");
            // x86-64 pt_regs: r15 … di, then orig_ax (the 16th word).
            if cfg!(target_arch = "x86_64") {
                assert_eq!(ids.pt_regs_syscall, Ok(15 * 8), "{name}");
            }
            assert!(ids.task_comm.is_ok(), "{name}");
            // unsigned int __state since 5.14 (after thread_info, first on x86-64: 24).
            assert!(ids.task_state.is_ok(), "{name}: {:?}", ids.task_state);
        }
    }
}
