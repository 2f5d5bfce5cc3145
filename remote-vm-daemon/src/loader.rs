//! Loads the embedded eBPF object, attaches every family it can, and hands out
//! the maps the exporter reads.
use std::path::Path;

use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{MapData, PerCpuArray},
};
use remote_vm_common::Point;

use crate::{
    kernel::KernelFacts,
    probes::{self, Verdict},
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/remote-vm"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read BTF from {path}: {reason}")]
    Btf { path: String, reason: String },
    #[error("cannot load the eBPF object: {reason}{hint}")]
    Object { reason: String, hint: String },
    #[error("the eBPF object has no map {0}")]
    Map(&'static str),
}

/// Everything that stays alive while the probes are attached.
pub struct Loaded {
    /// Owns the programs and their links; dropping it detaches everything.
    pub ebpf: Ebpf,
    pub verdicts: Vec<Verdict>,
    pub hits: PerCpuArray<MapData, u64>,
}

pub struct LoadOptions<'a> {
    pub btf_path: Option<&'a Path>,
    pub log_level: log::LevelFilter,
}

/// Reads the BTF the daemon should use: `--btf PATH`, else the kernel's own, else none.
pub fn read_btf(btf_path: Option<&Path>) -> Result<Option<Btf>, LoadError> {
    match btf_path {
        Some(path) => Btf::parse_file(path, Endianness::default())
            .map(Some)
            .map_err(|e| LoadError::Btf {
                path: path.display().to_string(),
                reason: probes::describe(e),
            }),
        None => match Btf::from_sys_fs() {
            Ok(btf) => Ok(Some(btf)),
            Err(e) => {
                log::warn!("no kernel BTF ({}); only kprobes can attach", probes::describe(e));
                Ok(None)
            }
        },
    }
}

pub fn load(opts: &LoadOptions<'_>, facts: &KernelFacts) -> Result<Loaded, LoadError> {
    raise_memlock_limit();
    let btf = read_btf(opts.btf_path)?;
    let level = aya_log_level(opts.log_level);
    let mut ebpf = EbpfLoader::new()
        .btf(btf.as_ref())
        .override_global(aya_log::LEVEL, &level, false)
        .load(EBPF_OBJECT)
        .map_err(|e| LoadError::Object {
            reason: probes::describe(&e),
            hint: privilege_hint(),
        })?;
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => crate::logging::forward_ebpf_logs(logger),
        Err(e) => log::warn!("eBPF log messages will not be shown: {}", probes::describe(e)),
    }
    let verdicts = probes::FAMILIES
        .iter()
        .map(|family| probes::attach(&mut ebpf, btf.as_ref(), family))
        .collect();
    let _ = facts;
    let hits = PerCpuArray::try_from(ebpf.take_map("HITS").ok_or(LoadError::Map("HITS"))?)
        .map_err(|_| LoadError::Map("HITS"))?;
    Ok(Loaded {
        ebpf,
        verdicts,
        hits,
    })
}

impl Loaded {
    /// Hits of `point` summed over CPUs.
    pub fn hits(&self, point: Point) -> u64 {
        self.hits
            .get(&point.index(), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// aya-log's level numbering (Error = 1 … Trace = 5); 0 disables everything.
fn aya_log_level(level: log::LevelFilter) -> u8 {
    level as usize as u8
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); not needed on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}

/// Names the capabilities loading needs when the effective set lacks them.
fn privilege_hint() -> String {
    let missing = crate::caps::missing_for_loading();
    if missing.is_empty() {
        String::new()
    } else {
        format!(
            " (missing capability {}; run as root or grant CAP_BPF and CAP_PERFMON)",
            missing.join(", ")
        )
    }
}
