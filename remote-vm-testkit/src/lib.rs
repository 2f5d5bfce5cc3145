//! Test support shared by the VM runner and the host integration tests:
//! workloads with known answers and a reader for the daemon's metrics.
pub mod golden;
pub mod guest;
pub mod prom;
pub mod workload;
pub mod classes;
pub mod caps;
pub mod allows;
pub mod stall;
pub mod stress;
pub mod soak;
pub mod bench;
pub mod icount;
pub mod pki;
pub mod abuse;
pub mod cgsoak;
