//! `remote_vm_common::stats::bucket` as the kernel runs it: the eBPF object's
//! `bucket_search` program (the BPF assembly of the histograms' bucket
//! search), loaded alone and run with `BPF_PROG_TEST_RUN` on every seam of
//! every bucket, must give what `bucket_reference` gives.
use std::io;

use remote_vm_common::stats::bucket_reference;

use super::EBPF_OBJECT;

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

fn bpf(cmd: i64, attr: &mut [u8; 144]) -> i64 {
    // SAFETY: a bpf_attr-sized buffer the kernel reads (and may write) within its size.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) }
}

fn put(attr: &mut [u8; 144], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
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
    // One function, no maps, no calls: its instructions load as they are.
    let insns: Vec<u8> = function
        .instructions
        .iter()
        // SAFETY: `bpf_insn` is the kernel's 8-byte instruction.
        .flat_map(|i| unsafe { std::slice::from_raw_parts(std::ptr::from_ref(i).cast::<u8>(), 8) })
        .copied()
        .collect();
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let mut attr = [0u8; 144];
    put(&mut attr, 0, &BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
    put(&mut attr, 4, &((insns.len() / 8) as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 24, &1u32.to_ne_bytes());
    put(&mut attr, 28, &(log.len() as u32).to_ne_bytes());
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut attr);
    let verifier = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
    assert!(fd >= 0, "BPF_PROG_LOAD bucket_search: {}\n{verifier}", io::Error::last_os_error());
    // Every seam: 2^k - 1, 2^k, 2^k + 1, and the ends.
    let mut values = vec![0u64, 1, 2, 3, u64::MAX - 1, u64::MAX];
    for k in 1..64 {
        let p = 1u64 << k;
        values.extend([p - 1, p, p + 1, p | (p >> 1)]);
    }
    for v in values {
        let ctx = [v];
        let mut attr = [0u8; 144];
        put(&mut attr, 0, &(fd as u32).to_ne_bytes());
        put(&mut attr, 40, &8u32.to_ne_bytes());
        put(&mut attr, 48, &(ctx.as_ptr() as u64).to_ne_bytes());
        let r = bpf(BPF_PROG_TEST_RUN, &mut attr);
        assert_eq!(r, 0, "BPF_PROG_TEST_RUN bucket_search({v}): {}", io::Error::last_os_error());
        let retval = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
        assert_eq!(retval as usize, bucket_reference(v), "bucket({v}) in the kernel");
    }
    // SAFETY: the descriptor this test opened.
    unsafe { libc::close(fd as i32) };
}
