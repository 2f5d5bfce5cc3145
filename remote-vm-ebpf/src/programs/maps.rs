use aya_ebpf::{macros::map, maps::PerCpuArray};
use remote_vm_common::Point;

/// Hits per probe point, per CPU; summed in user space.
#[map(name = "HITS")]
pub static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Point::CAPACITY, 0);

#[inline(always)]
pub fn hit(point: Point) {
    if let Some(slot) = HITS.get_ptr_mut(point.index()) {
        // Per-CPU slot, programs do not nest on one CPU for these hooks.
        unsafe { *slot += 1 };
    }
}
