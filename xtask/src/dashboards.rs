//! The Grafana dashboards, written from one description here so every panel has a
//! unit, a unique id, the `${DS_PROMETHEUS}` datasource and an honest "no data"
//! text; `cargo xtask dashboards` writes `dashboards/*.json`, the tests check the
//! committed files are current and run every query against a real Prometheus.
use anyhow::{Context, Result, bail};
use remote_vm_common::{
    catalog::{self, CONTEXT_HOST, CONTEXT_REMOTE, Metric},
    classify::Path,
};
use serde_json::{Value, json};

const DS: &str = "${DS_PROMETHEUS}";

/// What a panel shows when its query returns nothing.
const NEEDS_READS: &str = "No data: needs the access_remote_vm and mmap_lock_remote probes and the start-up probe read's verdict (see Probe health), or no remote reads happened";
const NEEDS_VMA_STEPS: &str = "No data: needs the opt-in lock_vma_under_rcu probe (it runs on every page fault: see docs/probes-and-kernels.md), or no remote reads happened";
const NEEDS_RUN_STATS: &str = "No data: the kernel does not collect BPF run-time statistics (self_stats = true with the CAP_SYS_ADMIN drop-in, or kernel.bpf_stats_enabled = 1: see /healthz)";
const NEEDS_FALLBACKS: &str = "No data: needs the read probes and folio_walk_start (see Probe health), or no fallbacks happened";
const NEEDS_REMOTE_LOCK: &str = "No data: needs the access_remote_vm and mmap_lock_remote probes (see Probe health)";
const NEEDS_HOST_LOCK: &str = "No data: needs the mmap_lock_host probes (see Probe health)";
const NEEDS_LOCK_VMA: &str = "No data: needs the access_remote_vm probes and the opt-in lock_vma_under_rcu probe (it runs on every page fault: see docs/probes-and-kernels.md)";
const NEEDS_WALKS: &str = "No data: needs folio_walk_start and its BTF fields (see Probe health)";
const NEEDS_DAEMON: &str = "No data: no remote-vm daemon is scraped";
const NEEDS_WAITS: &str = "No data: needs the access_remote_vm and mmap_lock_remote probes, the task iterator and the host PID namespace (see /healthz)";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Timeseries,
    Stat,
    Table,
    Heatmap,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Timeseries => "timeseries",
            Kind::Stat => "stat",
            Kind::Table => "table",
            Kind::Heatmap => "heatmap",
        }
    }
}

/// One panel, or a row when `kind` is `None`.
pub struct Panel {
    pub title: &'static str,
    pub kind: Option<Kind>,
    pub unit: &'static str,
    pub description: &'static str,
    pub no_value: &'static str,
    /// (PromQL, legend)
    pub queries: Vec<(String, &'static str)>,
    /// Full width instead of half.
    pub wide: bool,
    /// A time series whose series stack (parts of one whole).
    pub stacked: bool,
}

fn row(title: &'static str) -> Panel {
    Panel {
        title,
        kind: None,
        unit: "",
        description: "",
        no_value: "",
        queries: Vec::new(),
        wide: true,
        stacked: false,
    }
}

fn panel(
    kind: Kind,
    title: &'static str,
    unit: &'static str,
    no_value: &'static str,
    description: &'static str,
    queries: Vec<(String, &'static str)>,
) -> Panel {
    Panel {
        title,
        kind: Some(kind),
        unit,
        description,
        no_value,
        queries,
        wide: false,
        stacked: false,
    }
}

fn wide(mut p: Panel) -> Panel {
    p.wide = true;
    p
}

fn stacked(mut p: Panel) -> Panel {
    p.stacked = true;
    p
}

/// The host dashboard's selector, with `extra` matchers.
fn h(extra: &str) -> String {
    let base = r#"job=~"$job",instance=~"$instance""#;
    if extra.is_empty() {
        format!("{{{base}}}")
    } else {
        format!("{{{base},{extra}}}")
    }
}

/// Restricts a per-(job, instance) expression to hosts of the chosen release,
/// patched state and series version, and gives it their labels.
fn fleet(expr: &str) -> String {
    let info = catalog::KERNEL_INFO.name;
    format!(
        r#"({expr}) * on (job, instance) group_left (release, patched, series) {info}{{job=~"$job",release=~"$release",patched=~"$patched",series=~"$series"}}"#
    )
}

fn quantiles(metric: &Metric, sel: &str, by: &str) -> Vec<(String, &'static str)> {
    let bucket = metric.sample("_bucket");
    [("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")]
        .iter()
        .map(|(q, _)| {
            (
                format!("histogram_quantile({q}, sum by ({by}, le) (rate({bucket}{sel}[$__rate_interval])))"),
                match *q {
                    "0.5" => "p50 {{path}}",
                    "0.9" => "p90 {{path}}",
                    _ => "p99 {{path}}",
                },
            )
        })
        .collect()
}

pub fn host_panels() -> Vec<Panel> {
    use Kind::*;
    let reads = catalog::READS.name;
    let ratio = format!(
        "sum(rate({reads}{}[$__rate_interval])) / sum(rate({reads}{}[$__rate_interval]))",
        h(&format!(r#"path="{}""#, Path::Fast.label())),
        h("")
    );
    vec![
        row("Overview"),
        panel(Stat, "Fast-path ratio", "percentunit", NEEDS_READS, "Remote reads that never took the target's mmap_lock: fast / all reads.", vec![(ratio.clone(), "fast path")]),
        panel(Table, "Kernel", "none", NEEDS_DAEMON, "Release, the config options the lockless path needs, and whether the kernel runs it (patched, decided by a probe read at start-up).", vec![(format!("{}{}", catalog::KERNEL_INFO.name, h("")), "")]),
        wide(panel(Timeseries, "Fast-path ratio over time", "percentunit", NEEDS_READS, "fast / all reads.", vec![(ratio, "fast path")])),
        panel(Timeseries, "Reads by path", "ops", NEEDS_READS, "Remote reads per second: fast (no mmap_lock), fallback (lockless loop, then mmap_lock), slow (mmap_lock only); unobserved: a probe the path depends on was skipped by the kernel (see Probe misses), counted on no path.", vec![
            (format!("sum by (path) (rate({reads}{}[$__rate_interval]))", h("")), "{{path}}"),
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::UNOBSERVED_READS.name, h("")), "unobserved"),
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::WRITES.name, h("")), "writes"),
        ]),
        panel(Timeseries, "Fallbacks by reason", "ops", NEEDS_FALLBACKS, "Why the lockless loop stopped.", vec![
            (format!("sum by (reason) (rate({}{}[$__rate_interval]))", catalog::FALLBACKS.name, h("")), "{{reason}}"),
        ]),
        panel(Timeseries, "Read latency by path", "s", NEEDS_READS, "__access_remote_vm entry to exit.", quantiles(&catalog::READ_DURATION, &h(""), "path")),
        panel(Heatmap, "Read latency heatmap", "s", NEEDS_READS, "All remote reads, log2 buckets.", vec![
            (format!("sum by (le) (rate({}{}[$__rate_interval]))", catalog::READ_DURATION.sample("_bucket"), h("")), "{{le}}"),
        ]),
        panel(Timeseries, "mmap_lock wait p99: remote reads vs host-wide", "s", NEEDS_REMOTE_LOCK, "remote_vm: a remote access's own acquisitions of the target's lock; host: contended waits on a thread's own mm.", vec![
            (format!("histogram_quantile(0.99, sum by (context, mode, le) (rate({}{}[$__rate_interval])))", catalog::MMAP_LOCK_WAIT.sample("_bucket"), h("")), "{{context}} {{mode}}"),
        ]),
        panel(Timeseries, "mmap_lock hold by remote reads", "s", NEEDS_REMOTE_LOCK, "First acquisition to the call's exit.", vec![
            (format!("histogram_quantile(0.5, sum by (le) (rate({}{}[$__rate_interval])))", catalog::MMAP_LOCK_HOLD.sample("_bucket"), h("")), "p50"),
            (format!("histogram_quantile(0.99, sum by (le) (rate({}{}[$__rate_interval])))", catalog::MMAP_LOCK_HOLD.sample("_bucket"), h("")), "p99"),
        ]),
        panel(Timeseries, "Host-wide mmap_lock waits", "ops", NEEDS_HOST_LOCK, "Contended waits per second on threads' own mm, and killed waiters.", vec![
            (format!("sum by (mode) (rate({}{}[$__rate_interval]))", catalog::MMAP_LOCK_WAIT.count(), h(&format!(r#"context="{CONTEXT_HOST}""#))), "waits {{mode}}"),
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::MMAP_LOCK_ACQUIRE_FAILURES.name, h("")), "failures"),
        ]),
        panel(Timeseries, "lock_vma_under_rcu failure ratio", "percentunit", NEEDS_LOCK_VMA, "NULL returns / calls, inside remote reads and elsewhere (page faults).", vec![
            (format!("sum by (context) (rate({}{}[$__rate_interval])) / sum by (context) (rate({}{}[$__rate_interval]))", catalog::LOCK_VMA_FAILURES.name, h(""), catalog::LOCK_VMA_CALLS.name, h("")), "{{context}}"),
        ]),
        panel(Timeseries, "Bytes", "Bps", NEEDS_READS, "Bytes returned by remote reads by path, and by the lockless loop of fallbacks.", vec![
            (format!("sum by (path) (rate({}{}[$__rate_interval]))", catalog::READ_BYTES.name, h("")), "read {{path}}"),
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::FALLBACK_LOCKLESS_BYTES.name, h("")), "lockless part of fallbacks"),
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::WRITTEN_BYTES.name, h("")), "written"),
        ]),
        row("Stalls: remote readers stuck on another process's mmap_lock"),
        panel(Timeseries, "Remote readers waiting now", "none", NEEDS_WAITS, "Remote accesses waiting for a target's mmap_lock at each scrape (who: /stalls in_progress or `remote-vm-daemon top`).", vec![
            (format!("max({}{})", catalog::MMAP_LOCK_WAITERS.name, h("")), "waiting"),
        ]),
        panel(Timeseries, "Oldest wait in progress", "s", NEEDS_WAITS, "Age of the longest remote wait for a target's mmap_lock at each scrape; 0 when none. The RemoteVmReaderStuck alert fires above 5 s for 1 m.", vec![
            (format!("max({}{})", catalog::MMAP_LOCK_OLDEST_WAIT.name, h("")), "oldest wait"),
        ]),
        wide(panel(Timeseries, "Stalls", "ops", NEEDS_REMOTE_LOCK, "Remote accesses whose wait for the target's mmap_lock reached stalls.threshold_seconds, by lock mode; events the ring buffer dropped (the stalls are still counted). Each stall is a line in the daemon's log and in /stalls.", vec![
            (format!("sum by (lock_mode) (rate({}{}[$__rate_interval]))", catalog::STALLS.name, h("")), "stalls {{lock_mode}}"),
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::STALL_EVENTS_DROPPED.name, h("")), "events dropped"),
        ])),
        wide(stacked(panel(Timeseries, "Stalls by what the holder was doing", "ops", NEEDS_REMOTE_LOCK, "The same stalls by the op of the lock's holder when last observed during the wait: its system call grouped (mmap, munmap, mremap, mprotect, madvise, mlock, munlock, brk), fault (the page-fault path), kthread (khugepaged, …), readers (reader-owned: see the queued writer in /stalls), other, unknown. Which thread, which call and how large a range: /stalls or `remote-vm-daemon top`.", vec![
            (format!("sum by (op) (rate({}{}[$__rate_interval]))", catalog::STALLS.name, h("")), "{{op}}"),
        ]))),
        row("Probe health"),
        panel(Table, "Probes", "none", NEEDS_DAEMON, "Each probe: the mode it attached in (1), or mode=none (0). See /healthz or `remote-vm-daemon check` for why.", vec![
            (format!("{}{}", catalog::PROBE_ATTACHED.name, h("")), ""),
        ]),
        panel(Timeseries, "Probe misses", "ops", NEEDS_DAEMON, "Runs the kernel reports missed, plus calls seen without entry or exit. Non-zero in kprobe modes, under recursion, and on preemptible kernels (trampolines skipped while preempted).", vec![
            (format!("sum by (probe) (rate({}{}[$__rate_interval]))", catalog::PROBE_MISSES.name, h("")), "{{probe}}"),
        ]),
        panel(Timeseries, "ns per hit by probe", "ns", NEEDS_RUN_STATS, "What one run of each probe's programs costs on these hosts, from the kernel's BPF run-time statistics (collected only while switched on: self_stats = true; the clock reads they add are included). Trampoline entry and exit are not counted.", vec![
            (
                format!(
                    "1e9 * sum by (probe) (rate({}{}[$__rate_interval])) / sum by (probe) (rate({}{}[$__rate_interval]))",
                    catalog::PROBE_RUN_SECONDS.name, h(""), catalog::PROBE_RUNS.name, h("")
                ),
                "{{probe}}",
            ),
        ]),
        row("What the data says about the review"),
        panel(Timeseries, "Reads locking several VMAs", "percentunit", NEEDS_VMA_STEPS, "Share of reads that locked two or more VMAs in the lockless loop (Suren, Lorenzo: multi-VMA reads).", vec![
            (format!("sum(rate({}{}[$__rate_interval])) / sum(rate({reads}{}[$__rate_interval]))", catalog::MULTI_VMA_READS.name, h(""), h("")), "multi-VMA"),
        ]),
        panel(Timeseries, "FOLL_ANON reads walked lockless in file mappings", "ops", NEEDS_WALKS, "cmdline/environ reads that the lockless path served from a non-anonymous VMA (Usama: the missing FOLL_ANON check, CVE-2018-1120).", vec![
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::FOLL_ANON_FILE_BACKED.name, h("")), "FOLL_ANON file-backed"),
        ]),
        panel(Timeseries, "Lockless bytes thrown away", "Bps", NEEDS_FALLBACKS, "Bytes the lockless loop copied that the call did not return (Lorenzo: the remaining return 0 paths).", vec![
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::LOCKLESS_BYTES_DISCARDED.name, h("")), "discarded bytes"),
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::LOCKLESS_DISCARDED_READS.name, h("")), "reads"),
        ]),
        panel(Timeseries, "Lockless walks by level, pages not marked accessed", "ops", NEEDS_WALKS, "Successful lockless folio walks by mapping level (David: huge mappings) and PTE pages read without folio_mark_accessed (Usama).", vec![
            (format!("sum by (level) (rate({}{}[$__rate_interval]))", catalog::FOLIO_WALKS.name, h("")), "walks {{level}}"),
            (format!("sum(rate({}{}[$__rate_interval]))", catalog::LOCKLESS_PTE_PAGES.name, h("")), "PTE pages not marked accessed"),
        ]),
    ]
}

pub fn fleet_panels() -> Vec<Panel> {
    use Kind::*;
    let reads = catalog::READS.name;
    let (fast, fallback) = (Path::Fast.label(), Path::Fallback.label());
    let all_reads = format!(r#"sum by (job, instance) (rate({reads}{{job=~"$job"}}[$__rate_interval]))"#);
    let fast_reads = format!(r#"sum by (job, instance) (rate({reads}{{job=~"$job",path="{fast}"}}[$__rate_interval]))"#);
    let fallback_reads = format!(r#"sum by (job, instance) (rate({reads}{{job=~"$job",path="{fallback}"}}[$__rate_interval]))"#);
    let per_host_ratio = fleet(&format!("{fast_reads} / {all_reads}"));
    let group_quantile = |q: &str, metric: &Metric, extra: &str| {
        let bucket = metric.sample("_bucket");
        format!(
            r#"histogram_quantile({q}, sum by (patched, series, le) ({}))"#,
            fleet(&format!(
                r#"sum by (job, instance, le) (rate({bucket}{{job=~"$job"{extra}}}[$__rate_interval]))"#
            ))
        )
    };
    vec![
        row("Patched vs unpatched"),
        panel(Table, "Hosts per kernel", "none", NEEDS_DAEMON, "Hosts reporting, by patched state, series version and release (a v1 and a v2 host of one release are two groups: their fallbacks mean different things).", vec![
            (format!(r#"count by (patched, series, release) ({}{{job=~"$job",release=~"$release",patched=~"$patched",series=~"$series"}})"#, catalog::KERNEL_INFO.name), ""),
        ]),
        panel(Timeseries, "Fast-path ratio by group", "percentunit", NEEDS_READS, "fast / all reads, per patched state and series version.", vec![
            (format!("sum by (patched, series) ({}) / sum by (patched, series) ({})", fleet(&fast_reads), fleet(&all_reads)), "patched={{patched}} series={{series}}"),
        ]),
        panel(Timeseries, "Remote-read latency by group", "s", NEEDS_READS, "p50 and p99 of remote reads, per patched state and series version.", vec![
            (group_quantile("0.5", &catalog::READ_DURATION, ""), "p50 patched={{patched}} series={{series}}"),
            (group_quantile("0.99", &catalog::READ_DURATION, ""), "p99 patched={{patched}} series={{series}}"),
        ]),
        panel(Timeseries, "mmap_lock wait of remote reads by group", "s", NEEDS_REMOTE_LOCK, "p99 of a remote access's own waits for the target's mmap_lock, per patched state and series version.", vec![
            (group_quantile("0.99", &catalog::MMAP_LOCK_WAIT, &format!(r#",context="{CONTEXT_REMOTE}""#)), "p99 patched={{patched}} series={{series}}"),
        ]),
        row("Stalls"),
        panel(Stat, "Hosts with a reader stuck now", "none", NEEDS_WAITS, "Hosts where a remote access has waited more than 5 s for a target's mmap_lock (as RemoteVmReaderStuck; 0 when none of the hosts that can see waits has one).", vec![
            (format!("count({stuck} > 5) or 0 * count({stuck})", stuck = fleet(&format!(r#"max by (job, instance) ({}{{job=~"$job"}})"#, catalog::MMAP_LOCK_OLDEST_WAIT.name))), "hosts"),
        ]),
        panel(Table, "Hosts by oldest wait in progress", "s", NEEDS_WAITS, "Top 10 hosts by the age of their longest remote wait for a target's mmap_lock now (0: nobody waiting).", vec![
            (format!("topk(10, {})", fleet(&format!(r#"max by (job, instance) ({}{{job=~"$job"}})"#, catalog::MMAP_LOCK_OLDEST_WAIT.name))), ""),
        ]),
        wide(panel(Timeseries, "Stalls by group", "ops", NEEDS_REMOTE_LOCK, "Remote accesses that waited at least stalls.threshold_seconds for the target's mmap_lock, per patched state and series version: what the series removes for resident pages.", vec![
            (format!("sum by (patched, series) ({})", fleet(&format!(r#"sum by (job, instance) (rate({}{{job=~"$job"}}[$__rate_interval]))"#, catalog::STALLS.name))), "patched={{patched}} series={{series}}"),
        ])),
        wide(stacked(panel(Timeseries, "What causes stalls", "ops", NEEDS_REMOTE_LOCK, "Stalls across the selected hosts by what the lock's holder was doing (op: its system call grouped, fault, kthread, readers, other, unknown). `remote-vm-daemon compare` gives the same per host-hour, patched vs unpatched.", vec![
            (format!("sum by (op) ({})", fleet(&format!(r#"sum by (job, instance, op) (rate({}{{job=~"$job"}}[$__rate_interval]))"#, catalog::STALLS.name))), "{{op}}"),
        ]))),
        row("Hosts"),
        wide(panel(Timeseries, "Fast-path ratio per host", "percentunit", NEEDS_READS, "fast / all reads on each host.", vec![
            (per_host_ratio, "{{instance}} ({{release}}, patched={{patched}}, series={{series}})"),
        ])),
        panel(Table, "Worst hosts by fallback ratio", "percentunit", NEEDS_READS, "Top 10: fallback / all reads.", vec![
            (format!("topk(10, {})", fleet(&format!("{fallback_reads} / {all_reads}"))), ""),
        ]),
        panel(Table, "Worst hosts by mmap_lock wait", "s", NEEDS_REMOTE_LOCK, "Top 10: p99 of remote reads' own mmap_lock waits.", vec![
            (format!("topk(10, {})", fleet(&format!(r#"histogram_quantile(0.99, sum by (job, instance, le) (rate({}{{job=~"$job",context="{CONTEXT_REMOTE}"}}[$__rate_interval])))"#, catalog::MMAP_LOCK_WAIT.sample("_bucket")))), ""),
        ]),
    ]
}

fn field_defaults(p: &Panel) -> Value {
    let mut d = json!({"unit": p.unit, "noValue": p.no_value});
    if p.stacked {
        d["custom"] = json!({"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 60, "lineWidth": 1});
    }
    d
}

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": DS})
}

fn variable(name: &str, label: &str, query: &str, multi: bool) -> Value {
    json!({
        "type": "query",
        "name": name,
        "label": label,
        "datasource": datasource(),
        "query": {"query": query, "refId": format!("{name}-variable")},
        "refresh": 2,
        "sort": 1,
        "includeAll": true,
        "multi": multi,
        "allValue": ".*",
        "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "skipUrlSync": false
    })
}

fn render(uid: &str, title: &str, description: &str, panels: &[Panel], fleet: bool) -> Value {
    let mut out = Vec::new();
    let (mut x, mut y) = (0, 0);
    for (i, p) in panels.iter().enumerate() {
        let id = i as u64 + 1;
        let Some(kind) = p.kind else {
            if x != 0 {
                x = 0;
                y += 8;
            }
            out.push(json!({
                "type": "row", "id": id, "title": p.title, "collapsed": false, "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}
            }));
            y += 1;
            continue;
        };
        let w = if p.wide { 24 } else { 12 };
        if x + w > 24 {
            x = 0;
            y += 8;
        }
        let targets: Vec<Value> = p
            .queries
            .iter()
            .enumerate()
            .map(|(j, (expr, legend))| {
                let ref_id = ((b'A' + j as u8) as char).to_string();
                match kind {
                    Kind::Table => json!({"datasource": datasource(), "expr": expr, "refId": ref_id, "format": "table", "instant": true, "range": false}),
                    Kind::Heatmap => json!({"datasource": datasource(), "expr": expr, "refId": ref_id, "legendFormat": legend, "format": "heatmap", "range": true}),
                    _ => json!({"datasource": datasource(), "expr": expr, "refId": ref_id, "legendFormat": legend, "range": true}),
                }
            })
            .collect();
        let options = match kind {
            Kind::Timeseries => json!({"legend": {"displayMode": "list", "placement": "bottom", "showLegend": true}, "tooltip": {"mode": "multi", "sort": "desc"}}),
            Kind::Stat => json!({"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false}, "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto", "textMode": "auto"}),
            Kind::Table => json!({"showHeader": true, "cellHeight": "sm", "footer": {"show": false, "reducer": ["sum"], "fields": ""}}),
            Kind::Heatmap => json!({"calculate": false, "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "fill": "dark-orange", "steps": 64, "reverse": false}, "yAxis": {"axisPlacement": "left", "unit": p.unit}, "legend": {"show": true}, "tooltip": {"mode": "single", "yHistogram": false}, "cellValues": {}, "exemplars": {"color": "rgba(255,0,255,0.7)"}, "filterValues": {"le": 1e-9}, "rowsFrame": {"layout": "auto"}, "showValue": "never"}),
        };
        out.push(json!({
            "id": id,
            "type": kind.name(),
            "title": p.title,
            "description": p.description,
            "datasource": datasource(),
            "gridPos": {"h": 8, "w": w, "x": x, "y": y},
            "fieldConfig": {"defaults": field_defaults(p), "overrides": []},
            "options": options,
            "targets": targets,
        }));
        x += w;
        if x >= 24 {
            x = 0;
            y += 8;
        }
    }
    let mut vars = vec![json!({
        "type": "datasource", "name": "DS_PROMETHEUS", "label": "Prometheus", "query": "prometheus",
        "hide": 0, "includeAll": false, "multi": false, "options": [], "refresh": 1, "regex": "", "skipUrlSync": false
    })];
    let (build_info, kernel_info) = (catalog::BUILD_INFO.name, catalog::KERNEL_INFO.name);
    vars.push(variable("job", "Job", &format!("label_values({build_info}, job)"), true));
    if fleet {
        vars.push(variable("release", "Release", &format!(r#"label_values({kernel_info}{{job=~"$job"}}, release)"#), true));
        vars.push(variable("patched", "Patched", &format!(r#"label_values({kernel_info}{{job=~"$job"}}, patched)"#), true));
        vars.push(variable("series", "Series version", &format!(r#"label_values({kernel_info}{{job=~"$job"}}, series)"#), true));
    } else {
        vars.push(variable("instance", "Host", &format!(r#"label_values({build_info}{{job=~"$job"}}, instance)"#), false));
    }
    let mut requires = vec![
        json!({"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"}),
        json!({"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}),
    ];
    let mut kinds: Vec<&str> = panels.iter().filter_map(|p| p.kind.map(Kind::name)).collect();
    kinds.sort();
    kinds.dedup();
    for k in kinds {
        requires.push(json!({"type": "panel", "id": k, "name": k, "version": ""}));
    }
    json!({
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "The Prometheus that scrapes remote-vm-daemon", "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": requires,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["remote-vm", "mmap_lock"],
        "editable": true,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": false,
        "weekStart": "",
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": true, "hide": true,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"
        }]},
        "templating": {"list": vars},
        "panels": out,
    })
}

pub fn host() -> Value {
    render(
        "remote-vm-host",
        "remote-vm: host",
        "One host's remote-memory reads (__access_remote_vm): fast path, fallbacks, slow path, mmap_lock waits, probe health.",
        &host_panels(),
        false,
    )
}

pub fn fleet_dashboard() -> Value {
    render(
        "remote-vm-fleet",
        "remote-vm: fleet",
        &format!("Patched vs unpatched kernels across hosts, joined on {}.", catalog::KERNEL_INFO.name),
        &fleet_panels(),
        true,
    )
}

/// The files `cargo xtask dashboards` writes: (path under the repo, contents).
pub fn files() -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("dashboards/remote-vm-host.json", serde_json::to_string_pretty(&host())? + "\n"),
        ("dashboards/remote-vm-fleet.json", serde_json::to_string_pretty(&fleet_dashboard())? + "\n"),
    ])
}

/// Every PromQL expression of a dashboard, with its panel title.
pub fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("").to_string(), expr.to_string()));
            }
        }
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {}", v["name"].as_str().unwrap_or("")), q.to_string()));
        }
    }
    out
}

/// Structure checks beyond the schema: unique ids, a unit on every panel, the
/// datasource input on every panel and target, grid inside 24 columns.
pub fn lint(dashboard: &Value) -> Result<()> {
    let title = dashboard["title"].as_str().unwrap_or("?");
    let inputs = dashboard["__inputs"].as_array().context("__inputs")?;
    if !inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus") {
        bail!("{title}: no DS_PROMETHEUS input");
    }
    let mut ids = std::collections::BTreeSet::new();
    for p in dashboard["panels"].as_array().context("panels")? {
        let id = p["id"].as_u64().context("panel id")?;
        if !ids.insert(id) {
            bail!("{title}: panel id {id} twice");
        }
        let gp = &p["gridPos"];
        if gp["x"].as_u64().unwrap_or(99) + gp["w"].as_u64().unwrap_or(99) > 24 {
            bail!("{title}: panel {id} outside the grid");
        }
        if p["type"] == "row" {
            continue;
        }
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        if unit.is_empty() {
            bail!("{title}: panel {:?} has no unit", p["title"]);
        }
        if p["datasource"]["uid"] != DS {
            bail!("{title}: panel {:?} does not use ${{DS_PROMETHEUS}}", p["title"]);
        }
        for t in p["targets"].as_array().context("targets")? {
            if t["datasource"]["uid"] != DS {
                bail!("{title}: a target of {:?} does not use ${{DS_PROMETHEUS}}", p["title"]);
            }
            let expr = t["expr"].as_str().unwrap_or("");
            if expr.contains("rate(") && !expr.contains("$__rate_interval") {
                bail!("{title}: {:?} uses rate without $__rate_interval", p["title"]);
            }
        }
        if p["fieldConfig"]["defaults"]["noValue"].as_str().unwrap_or("").is_empty() {
            bail!("{title}: panel {:?} has no no-data text", p["title"]);
        }
    }
    Ok(())
}

/// A query with the dashboard variables replaced for a direct API call.
pub fn substitute(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$release", ".*")
        .replace("$patched", ".*")
        .replace("$series", ".*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboards_lint_clean_and_committed_files_are_current() {
        lint(&host()).unwrap();
        lint(&fleet_dashboard()).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (path, contents) in files().unwrap() {
            let committed = std::fs::read_to_string(root.join(path)).unwrap_or_default();
            assert!(committed == contents, "{path} is stale: run `cargo xtask dashboards`");
        }
    }

    #[test]
    fn substitution_leaves_no_variable() {
        for d in [host(), fleet_dashboard()] {
            for (_, q) in queries(&d) {
                let s = substitute(&q, "1m");
                assert!(!s.contains('$'), "{s}");
            }
        }
    }
}
