//! `remote_vm_common::stats::bucket` as the kernel runs it: the eBPF object's
//! `bucket_search` program (the BPF assembly of the histograms' bucket
//! search), loaded alone and run with `BPF_PROG_TEST_RUN` on every seam of
//! every bucket, must give what `bucket_reference` gives.
use std::os::fd::{FromRawFd, OwnedFd};

use aya_obj::generated::{bpf_cmd, bpf_prog_type};
use remote_vm_common::stats::bucket_reference;

use super::{EBPF_OBJECT, misses::bpf};

/// `union bpf_attr` for `BPF_PROG_LOAD`, as far as this load needs it.
#[repr(C)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`, as far as a context run needs it.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
}

#[test]
fn bucket_search_in_the_kernel() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bucket_search_in_the_kernel: not run: loading a BPF program needs root");
        return;
    }
    let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("parse the embedded object");
    let program = obj.programs.get("bucket_search").expect("bucket_search in the object");
    let function = &obj.functions[&program.function_key()];
    // One function, no maps, no calls: its instructions (the kernel's
    // `struct bpf_insn`) load as they are.
    let insns = &function.instructions;
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let mut attr = LoadAttr {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT as u32,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
    };
    let loaded = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
    let verifier = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
    let fd = loaded.unwrap_or_else(|e| panic!("BPF_PROG_LOAD bucket_search: {e}\n{verifier}"));
    // SAFETY: a new descriptor this test owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Every seam: 2^k - 1, 2^k, 2^k + 1, and the ends.
    let mut values = vec![0u64, 1, 2, 3, u64::MAX - 1, u64::MAX];
    for k in 1..64 {
        let p = 1u64 << k;
        values.extend([p - 1, p, p + 1, p | (p >> 1)]);
    }
    for v in values {
        let ctx = [v];
        let mut attr = TestRunAttr {
            prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
            ctx_size_in: 8,
            ctx_in: ctx.as_ptr() as u64,
            ..TestRunAttr::default()
        };
        if let Err(e) = bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr) {
            panic!("BPF_PROG_TEST_RUN bucket_search({v}): {e}");
        }
        assert_eq!(attr.retval as usize, bucket_reference(v), "bucket({v}) in the kernel");
    }
}
