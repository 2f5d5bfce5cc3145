//! Maps and helpers every family uses.
use core::ptr;

use aya_ebpf::{
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_task_storage_get},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use remote_vm_common::{
    Control, HostWait, Point, SelfTest,
    classify::CallState,
    holder::{HolderStack, STACKS_WANTED_MAX},
    stats::Stats,
};

/// Hits per probe point, per CPU.
#[map(name = "HITS")]
pub static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Point::CAPACITY, 0);

/// Counters and histograms, one `Stats` per CPU.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// Written by user space: which thread makes the start-up probe read.
#[map(name = "CONTROL")]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

/// What the start-up probe read saw.
#[map(name = "SELFTEST")]
pub static SELFTEST: Array<SelfTest> = Array::with_max_entries(1, 0);

/// One event per stall (`remote_vm_common::StallEvent`); nothing else goes
/// through it, so it carries nothing on the paths of ordinary calls.
#[map(name = "STALL_EVENTS")]
pub static STALL_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// One record (the wait's start, `bpf_ktime_get_ns()`) when a remote access
/// finds its target's lock held by a writer or with a writer queued — it is
/// about to wait: it wakes the daemon's watcher, which runs the task
/// iterators while the wait lasts. Never written on the uncontended path.
#[map(name = "WAIT_BEGUN")]
pub static WAIT_BEGUN: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Written by user space before a run of `holder_stacks`: the thread ids
/// whose kernel stacks it wants (the value is unused).
#[map(name = "STACK_WANTED")]
pub static STACK_WANTED: HashMap<u32, u32> = HashMap::with_max_entries(STACKS_WANTED_MAX, 0);

/// `holder_stacks`' record under construction (too big for the stack).
#[map(name = "STACK_SCRATCH")]
pub static STACK_SCRATCH: PerCpuArray<HolderStack> = PerCpuArray::with_max_entries(1, 0);

/// A `BPF_MAP_TYPE_TASK_STORAGE` map, declared the BTF way (`.maps`): one `T` per
/// task, created on demand, freed with the task. A lookup on a task that never
/// made a remote access is a NULL check on `task->bpf_storage`: cheap on the
/// page-fault path.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; 29],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    /// BPF_F_NO_PREALLOC, required for local storage.
    map_flags: *const [i32; 1],
}

// SAFETY: the fields are BTF placeholders the loader reads; never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        TaskStorage {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The map as a helper argument.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut core::ffi::c_void {
        ptr::from_ref(self).cast_mut().cast()
    }

    /// The current task's value; with `create`, a zeroed one is made if missing.
    #[inline(always)]
    pub fn current(&self, create: bool) -> Option<&mut T> {
        const BPF_LOCAL_STORAGE_GET_F_CREATE: u64 = 1;
        // SAFETY: helper call with this map and the current task (a trusted BTF
        // pointer); the result is NULL or a pointer to this task's value.
        unsafe {
            let task = bpf_get_current_task_btf();
            let p = bpf_task_storage_get(
                self.as_ptr(),
                task,
                ptr::null_mut(),
                if create { BPF_LOCAL_STORAGE_GET_F_CREATE } else { 0 },
            );
            p.cast::<T>().as_mut()
        }
    }
}

/// Per-thread state of the remote access in progress, for a thread whose
/// slot in `CALL_SLOTS` another thread holds.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "CALLS")]
pub static CALLS: TaskStorage<CallState> = TaskStorage::new();

/// Slots of `CALL_SLOTS`: a thread's slot is its thread id modulo this.
pub const CALL_SLOT_COUNT: u32 = 1024;

/// One thread's call state in `CALL_SLOTS`: `owner` is the thread id that
/// holds the slot (0: free). Padded to `CALL_SLOT_SIZE`, a power of two, so a
/// slot's offset is a shift: older verifiers (6.1) lose the alignment of a
/// multiplied index, and the slot's atomics need it.
#[repr(C)]
pub struct CallSlot {
    pub owner: u64,
    pub state: CallState,
    _pad: [u8; CALL_SLOT_SIZE - 8 - core::mem::size_of::<CallState>()],
}

/// Bytes per slot: 1024 slots are 512 KiB.
const CALL_SLOT_SIZE: usize = 512;
const _: () = assert!(CALL_SLOT_SIZE.is_power_of_two() && core::mem::size_of::<CallSlot>() == CALL_SLOT_SIZE);

/// The remote access in progress, per thread, where finding it costs an
/// address computation instead of a `bpf_task_storage_get()` call (about 140
/// guest instructions, docs/benchmarks.md): a thread claims its slot at a
/// call's entry (an atomic compare-and-exchange from free) and frees it at
/// the exit; a thread that finds its slot held by another keeps its state in
/// `CALLS` instead. A slot whose exit was never seen stays its thread's (its
/// next call reports the missed exit); one whose thread died so stays taken,
/// and the threads of that slot use `CALLS`. A global array (the object's
/// `.bss`, one array map of one value the loader creates), not a map of its
/// own: an array map's inlined lookup is a dozen instructions more a program
/// (the key on the stack, the bound's check, the NULL check); the slot is
/// the masked thread id shifted by the slot's size.
#[unsafe(no_mangle)]
static mut CALL_SLOTS: [CallSlot; CALL_SLOT_COUNT as usize] =
    // SAFETY: all-zero is a free slot (owner 0) with `CallState::default()`.
    unsafe { core::mem::zeroed() };

/// The slot of thread `tid`.
#[inline(always)]
pub fn call_slot(tid: u64) -> &'static mut CallSlot {
    let i = (tid & u64::from(CALL_SLOT_COUNT - 1)) as usize;
    // SAFETY: `i` is below the array's length (the verifier sees the mask);
    // the array lives as long as the programs, and a slot is written only by
    // the thread that holds it (or claims it with a compare-and-exchange).
    unsafe { &mut *(&raw mut CALL_SLOTS).cast::<CallSlot>().add(i) }
}

impl CallSlot {
    /// Held by thread `tid` (0 is no thread: a free slot's owner).
    #[inline(always)]
    pub fn held_by(&self, tid: u64) -> bool {
        tid != 0 && self.owner == tid
    }
}

/// The current thread's remote access in progress: where it keeps it.
pub struct Current {
    pub state: &'static mut CallState,
    /// Its slot's owner word when the state is in its slot.
    owner: Option<*mut u64>,
}

impl Current {
    /// The thread's state, if it has one (no slot claimed, nothing created).
    #[inline(always)]
    pub fn get() -> Option<Current> {
        let t = tid();
        let slot = call_slot(t);
        if slot.held_by(t) {
            let owner = ptr::from_mut(&mut slot.owner);
            return Some(Current { state: &mut slot.state, owner: Some(owner) });
        }
        CALLS.current(false).map(|state| Current { state, owner: None })
    }

    /// At a call's entry: the thread's slot when it holds it or can claim it,
    /// else its task storage (created).
    #[inline(always)]
    pub fn claim() -> Option<Current> {
        let t = tid();
        let slot = call_slot(t);
        if slot.held_by(t) || (t != 0 && slot.owner == 0 && remote_vm_common::stats::claim(&mut slot.owner, t)) {
            let owner = ptr::from_mut(&mut slot.owner);
            return Some(Current { state: &mut slot.state, owner: Some(owner) });
        }
        CALLS.current(true).map(|state| Current { state, owner: None })
    }

    /// At a call's exit, once its state is finished: frees the slot.
    #[inline(always)]
    pub fn release(self) {
        if let Some(owner) = self.owner {
            // SAFETY: the slot's owner word; only its owner writes it nonzero.
            unsafe { ptr::write_volatile(owner, 0) };
        }
    }
}

/// Per-thread host-wide mmap_lock wait in progress.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "WAITS")]
pub static WAITS: TaskStorage<HostWait> = TaskStorage::new();

/// One run of `point`'s program that no call's counters count
/// (`Stats::implied_hits`).
#[inline(always)]
pub fn hit(point: Point) {
    hit_n(point, 1);
}

/// `n` such runs (none: no add).
#[inline(always)]
pub fn hit_n(point: Point, n: u64) {
    if n == 0 {
        return;
    }
    if let Some(slot) = HITS.get_ptr_mut(point.index()) {
        // SAFETY: this CPU's slot, valid for the program's run; increments are
        // atomic (another run may interleave on this CPU, see `bump`).
        remote_vm_common::stats::bump(unsafe { &mut *slot }, n);
    }
}

#[inline(always)]
pub fn stats() -> Option<&'static mut Stats> {
    // SAFETY: this CPU's value.
    STATS.get_ptr_mut(0).and_then(|p| unsafe { p.as_mut() })
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Reads a `u64` (or pointer) at `base + off` in kernel memory; 0 on failure.
#[inline(always)]
pub fn read_u64(base: u64, off: u64) -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base.wrapping_add(off)) as *const u64).unwrap_or(0) }
}

#[inline(always)]
pub fn read_u32(base: u64, off: u64) -> u32 {
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((base.wrapping_add(off)) as *const u32).unwrap_or(u32::MAX) }
}

/// A field of a kernel object: `DIRECT`, `base` is a BTF-typed pointer (an
/// fentry/fexit or tp_btf argument) and `off` a global from the frozen
/// `.rodata`, so the verifier knows the field and allows one load instruction
/// (a fault reads 0); otherwise `bpf_probe_read_kernel` (kprobes), a helper
/// call that costs the order of a hundred instructions more.
#[inline(always)]
pub fn load_u64<const DIRECT: bool>(base: u64, off: u64) -> u64 {
    if DIRECT {
        // SAFETY: see above; the verifier checks the access against BTF.
        unsafe { ptr::read_volatile(base.wrapping_add(off) as *const u64) }
    } else {
        read_u64(base, off)
    }
}

/// The same for a 32-bit field (a faulting direct load reads 0; a failed
/// checked read gives `u32::MAX`).
#[inline(always)]
pub fn load_u32<const DIRECT: bool>(base: u64, off: u64) -> u32 {
    if DIRECT {
        // SAFETY: as above.
        unsafe { ptr::read_volatile(base.wrapping_add(off) as *const u32) }
    } else {
        read_u32(base, off)
    }
}

/// The current task's `mm` (0 for kernel threads or when the offset is unknown).
#[inline(always)]
pub fn current_mm() -> u64 {
    let off = super::layout::TASK_MM_OFF.load();
    if !super::layout::known(off) {
        return 0;
    }
    // SAFETY: the current task pointer is always valid.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    read_u64(task, off)
}

/// The thread id of the current task (as the kernel's initial PID namespace
/// numbers it): `current->pid`, one load from the current task's BTF pointer
/// (`bpf_get_current_task_btf()` is inlined: 7 guest instructions, where the
/// `bpf_get_current_pid_tgid()` call is a helper call); the helper where BTF
/// gave no offset. As a `u64` whose upper half is zero on either path, so
/// no zero-extension follows where it is compared or stored as a slot's owner.
#[inline(always)]
pub fn tid() -> u64 {
    let off = super::layout::TASK_PID_OFF.load();
    if super::layout::known(off) {
        // SAFETY: no preconditions; the current task is a trusted BTF pointer.
        let task = unsafe { bpf_get_current_task_btf() } as u64;
        return u64::from(load_u32::<true>(task, off));
    }
    aya_ebpf::helpers::bpf_get_current_pid_tgid() & 0xffff_ffff
}

/// Whether the current thread is the daemon's start-up probe reader: its
/// thread id in the daemon's PID namespace (which may not be the initial one)
/// is the one in `CONTROL` (the initial numbering where the kernel has no PID
/// namespaces). Only while a probe read is under way is more than the map
/// lookup done.
#[inline(always)]
pub fn is_selftest(c: &Control) -> bool {
    if c.selftest_tid == 0 {
        return false;
    }
    if c.pidns_ino == 0 {
        // No PID namespaces in this kernel: the initial numbering is the daemon's.
        return tid() == u64::from(c.selftest_tid);
    }
    let mut ns = aya_ebpf::bindings::bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: the helper fills `ns` (its size given) or fails when the current
    // task is not in that namespace.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_get_ns_current_pid_tgid(
            c.pidns_dev,
            c.pidns_ino,
            &raw mut ns,
            core::mem::size_of::<aya_ebpf::bindings::bpf_pidns_info>() as u32,
        )
    };
    r == 0 && ns.pid == c.selftest_tid
}

/// `struct bpf_iter_meta` (task iterators: `waits`, `stacks`).
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut core::ffi::c_void,
    pub session_id: u64,
    pub seq_num: u64,
}

/// `struct bpf_iter__task`: `task` is NULL on the call after the last task.
#[repr(C)]
pub struct IterTask {
    pub meta: *mut IterMeta,
    pub task: *mut aya_ebpf::bindings::task_struct,
}
