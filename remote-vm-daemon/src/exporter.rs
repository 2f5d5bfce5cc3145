//! Builds the metric families from the daemon's state on every scrape.
//! Scraping reads BPF maps and `/proc/self/{stat,status,limits,fd}` only: never
//! another process's memory, so a scrape is never counted as a remote access.
use crate::{
    kernel::KernelFacts,
    loader::Loaded,
    metrics::{Family, Kind, encode_all},
    probes::Verdict,
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct State {
    pub facts: KernelFacts,
    pub loaded: Loaded,
}

pub fn families(state: &State) -> Vec<Family> {
    let mut out = Vec::new();

    let mut build = Family::new(
        "remote_vm_build_info",
        Kind::Gauge,
        "remote-vm daemon build; always 1.",
    );
    build.push(&[("version", VERSION)], 1u64);
    out.push(build);

    let f = &state.facts;
    let mut kernel = Family::new(
        "remote_vm_kernel_info",
        Kind::Gauge,
        "The running kernel: release and the config options the lockless remote-read path needs (yes, no, unknown); always 1.",
    );
    kernel.push(
        &[
            ("release", &f.release),
            ("per_vma_lock", f.per_vma_lock.as_str()),
            ("rcu_table_free", f.rcu_table_free.as_str()),
        ],
        1u64,
    );
    out.push(kernel);

    out.extend(probe_families(&state.loaded.verdicts, |p| state.loaded.hits(p)));
    out
}

/// `remote_vm_probe_attached` (every probe, `mode="none"` when not attached) and
/// `remote_vm_probe_hits_total` (attached probes only: no zero where nothing runs).
pub fn probe_families(verdicts: &[Verdict], hits: impl Fn(remote_vm_common::Point) -> u64) -> Vec<Family> {
    let mut attached = Family::new(
        "remote_vm_probe_attached",
        Kind::Gauge,
        "1 if the probe is attached in the given mode; 0 with mode=\"none\" if no mode could attach (see /healthz or `check` for why).",
    );
    let mut hit_family = Family::new(
        "remote_vm_probe_hits_total",
        Kind::Counter,
        "Times the probe's program ran.",
    );
    for v in verdicts {
        for point in v.family.points() {
            attached.push(&[("probe", point.name()), ("mode", v.mode_name())], u64::from(v.attached()));
            if v.attached() {
                hit_family.push(&[("probe", point.name())], hits(point));
            }
        }
    }
    vec![attached, hit_family]
}

/// One line per probe: its mode, or `none` and why. Used by `check` and `/healthz`.
pub fn verdict_lines(verdicts: &[Verdict]) -> Vec<String> {
    let mut lines = Vec::new();
    for v in verdicts {
        for point in v.family.points() {
            lines.push(match v.mode {
                Some(mode) => format!(
                    "probe {}: {} ({})",
                    point.name(),
                    mode.name,
                    if mode.exact { "exact" } else { "may miss events" }
                ),
                None => format!("probe {}: none ({})", point.name(), v.reason()),
            });
        }
    }
    lines
}

pub fn kernel_line(f: &KernelFacts) -> String {
    format!(
        "kernel: release={} btf={} per_vma_lock={} rcu_table_free={} config={}",
        f.release,
        f.btf,
        f.per_vma_lock,
        f.rcu_table_free,
        f.config_source
            .as_ref()
            .map_or("unknown".to_string(), |p| p.display().to_string()),
    )
}

/// The full /metrics body: our families, then the standard process metrics.
pub fn render(state: &State) -> String {
    let mut text = encode_all(&families(state));
    text.push_str(&process_metrics());
    text
}

fn process_metrics() -> String {
    use prometheus::Encoder;
    let registry = prometheus::Registry::new();
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    if registry.register(Box::new(collector)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
