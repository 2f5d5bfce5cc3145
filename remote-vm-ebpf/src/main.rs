//! The eBPF side of remote-vm. Every program does O(1) work and aggregates into
//! per-CPU maps; user space reads the maps on scrape. Nothing is streamed per event.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Host builds of this crate (e.g. `cargo check --workspace`) have nothing to run.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
