//! Types shared by the eBPF programs (`remote-vm-ebpf`) and the daemon.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of pointers so the same
//! bytes mean the same thing on both sides of a BPF map.
#![no_std]

pub mod point;

pub use point::Point;
