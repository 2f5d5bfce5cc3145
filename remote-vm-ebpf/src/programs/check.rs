//! Programs for tests only: the daemon never attaches them; its unit tests
//! load them alone and run them with `BPF_PROG_TEST_RUN`.
use remote_vm_common::stats::bucket;

/// The kernel's run of `remote_vm_common::stats::bucket` (BPF assembly) on
/// the context's first word, as the program's return value: the daemon's
/// `bucket_search_in_the_kernel` test compares it with `bucket_reference`.
/// Written without aya's macro, whose wrapper returns 0 whatever the
/// function returns; the tracepoint is never attached.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp/sys_enter")]
pub extern "C" fn bucket_search(ctx: *mut core::ffi::c_void) -> u32 {
    // SAFETY: the context holds the arguments the test run gives (at least one).
    let v: u64 = unsafe { *(ctx as *const u64) };
    bucket(v) as u32
}
