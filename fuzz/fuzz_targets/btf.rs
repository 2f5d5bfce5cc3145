//! A BTF file's bytes through every step the daemon takes on them: our reader,
//! aya's reader on what ours read, the layout (offsets, enums, tracepoint
//! arguments) and its report lines.
#![no_main]
use libfuzzer_sys::fuzz_target;
use remote_vm_daemon::kernel::from_btf_bytes;

fuzz_target!(|data: &[u8]| {
    match from_btf_bytes(data) {
        Ok(read) => {
            let _ = read.layout.lines();
            let _ = read.layout.has_lockless_path();
        }
        // Every refusal is one line.
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
});
