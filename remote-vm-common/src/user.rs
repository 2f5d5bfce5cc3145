//! User space only (feature `user`): what the daemon and the tests need of the
//! shared types beyond the ABI — reading them out of BPF maps.

// SAFETY: plain #[repr(C)] data without padding invariants; any bit pattern is valid.
unsafe impl aya::Pod for crate::Control {}
unsafe impl aya::Pod for crate::SelfTest {}
unsafe impl aya::Pod for crate::stats::Stats {}
unsafe impl aya::Pod for crate::StallEvent {}
