//! `compare` at fleet scale on three engines: Debian's Prometheus 2.42, a
//! Prometheus 3.x and VictoriaMetrics (sid's packages, unpacked, never
//! installed), each holding the same synthetic fleet — `hosts` hosts over
//! `days` days at a 5-minute interval, backfilled (`promtool tsdb
//! create-blocks-from openmetrics`; VictoriaMetrics' import API) — with hosts
//! rebooted from the unpatched into the patched kernel mid-range, daemon
//! restarts (counter resets), hosts that leave and hosts that join. The
//! generator knows every increment it made: `compare` must give exactly
//! those totals, per kernel group, in both modes; with the engine's sample
//! limit lowered, the raw mode is refused and the chunked mode still exact.
//! The dashboards' and rules' expressions must evaluate on all three.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use remote_vm_common::catalog as cat;

use crate::{
    apt::{self, Apt},
    dashboards,
    promtest::{self, Guard},
    util::{say, sh},
};

pub struct Args {
    pub hosts: usize,
    pub days: u64,
}

const INTERVAL_S: i64 = 300;
/// Hosts per OpenMetrics file (some 2.6 GB at 7 days).
const SHARD_HOSTS: usize = 2000;

/// The counters the fleet exports: (metric, the series' label, its value,
/// compare's key).
const SERIES: &[(&str, &str, &str, &str)] = &[
    (cat::READS.name, "path", "fast", "reads"),
    (cat::READS.name, "path", "fallback", "reads"),
    (cat::READS.name, "path", "slow", "reads"),
    (cat::FALLBACKS.name, "reason", "vma_lock_failed", "fallbacks"),
    (cat::FALLBACKS.name, "reason", "page_not_present", "fallbacks"),
    // Stalls by the holder's op (compare's stalls per host-hour by op).
    (cat::STALLS.name, "op", "munmap", "stalls"),
];

/// SplitMix64: the same fleet on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// (patched, series, release): v1 and v2 hosts of one release are two groups.
type Kernel = (&'static str, &'static str, &'static str);
const UNPATCHED: Kernel = ("no", "none", "7.3.4");
const PATCHED: Kernel = ("yes", "v1", "7.3.4");
const PATCHED_V2: Kernel = ("yes", "v2", "7.3.4");
const OLD: Kernel = ("no", "none", "6.12.117");

/// One host's life over the range, by sample index.
struct Plan {
    instance: String,
    /// Samples `first..last`.
    first: usize,
    last: usize,
    /// The kernel from each index on (a reboot resets the counters).
    kernels: Vec<(usize, Kernel)>,
    /// Daemon restarts without a kernel change.
    restarts: Vec<usize>,
}

impl Plan {
    fn kernel_at(&self, i: usize) -> Kernel {
        self.kernels.iter().rev().find(|(from, _)| *from <= i).map_or(UNPATCHED, |(_, k)| *k)
    }

    fn reset_at(&self, i: usize) -> bool {
        i > self.first && (self.restarts.contains(&i) || self.kernels.iter().any(|(from, _)| *from == i && i > 0))
    }
}

/// The increment of one series at one sample: fast reads only on the
/// patched kernel, and more of them; a few slow ones everywhere.
fn increment(rng: &mut Rng, kernel: Kernel, series: usize) -> u64 {
    let patched = kernel.0 == "yes";
    match (series, patched) {
        (0, true) => 200 + rng.below(400),
        (0, false) => 0,
        (1, true) => rng.below(20),
        (1, false) => 0,
        (2, true) => rng.below(5),
        (2, false) => 100 + rng.below(300),
        (3, true) => rng.below(10),
        (4, true) => rng.below(10),
        _ => 0,
    }
}

/// What compare must say for one group.
#[derive(Debug, Default, PartialEq)]
struct Truth {
    hosts: BTreeSet<String>,
    counts: BTreeMap<String, u64>,
    resets: u64,
}

struct Fleet {
    plans: Vec<Plan>,
    /// The first sample's time (Unix seconds) and how many per host at most.
    t0: i64,
    samples: usize,
}

impl Fleet {
    fn new(hosts: usize, days: u64, end_sample: i64) -> Fleet {
        let samples = (days as i64 * 86400 / INTERVAL_S) as usize + 1;
        let t0 = end_sample - (samples as i64 - 1) * INTERVAL_S;
        let mut rng = Rng(0x5eed_f1ee7);
        let plans = (0..hosts)
            .map(|h| {
                let r = rng.below(100);
                let mid = || samples / 4 + (h * 7919) % (samples / 2);
                let (mut first, mut last) = (0, samples);
                let mut kernels = vec![(0, [PATCHED, UNPATCHED, OLD, PATCHED_V2][h % 4])];
                let mut restarts = Vec::new();
                match r {
                    // Rebooted from unpatched into patched mid-range.
                    0..=9 => kernels = vec![(0, UNPATCHED), (mid(), PATCHED)],
                    // Daemon restarts (each after the counters grew: a drop to see).
                    10..=14 => restarts = vec![mid(), mid() + samples / 8],
                    // Left mid-range.
                    15..=19 => last = mid(),
                    // Joined mid-range.
                    20..=24 => first = mid(),
                    _ => {}
                }
                Plan {
                    instance: format!("host-{h:05}:19361"),
                    first,
                    last,
                    kernels,
                    restarts,
                }
            })
            .collect();
        Fleet { plans, t0, samples }
    }

    fn time(&self, i: usize) -> i64 {
        self.t0 + i as i64 * INTERVAL_S
    }

    /// Writes the fleet as OpenMetrics (for promtool; seconds) and as the
    /// text format with millisecond timestamps (for VictoriaMetrics' import),
    /// and returns the totals of the samples in `(start, end]`.
    fn write(&self, hosts: std::ops::Range<usize>, om: impl Write, vm: impl Write, start: f64, end: f64, truth: &mut BTreeMap<Kernel, Truth>) -> Result<()> {
        let mut om = BufWriter::with_capacity(1 << 20, om);
        let mut vm = BufWriter::with_capacity(1 << 20, vm);
        let in_range = |t: i64| (t as f64) > start && (t as f64) <= end;
        let info = cat::KERNEL_INFO.name;
        writeln!(om, "# TYPE {info} gauge")?;
        for p in &self.plans[hosts.clone()] {
            for i in p.first..p.last {
                let k = p.kernel_at(i);
                let t = self.time(i);
                let labels = format!("job=\"remote-vm\",instance=\"{}\",patched=\"{}\",series=\"{}\",release=\"{}\",per_vma_lock=\"yes\",rcu_table_free=\"yes\"", p.instance, k.0, k.1, k.2);
                writeln!(om, "{info}{{{labels}}} 1 {t}")?;
                writeln!(vm, "{info}{{{labels}}} 1 {}", t * 1000)?;
                if in_range(t) {
                    truth.entry(k).or_default().hosts.insert(p.instance.clone());
                }
            }
        }
        let mut family = "";
        for (s, (metric, label, value, key)) in SERIES.iter().enumerate() {
            // OpenMetrics names a counter family without `_total`.
            let fam = metric.strip_suffix("_total").unwrap_or(metric);
            if fam != family {
                writeln!(om, "# TYPE {fam} counter")?;
                family = fam;
            }
            for (h, p) in self.plans.iter().enumerate().skip(hosts.start).take(hosts.len()) {
                let mut rng = Rng((h as u64) << 8 | s as u64);
                let mut v: u64 = 0;
                let mut seen = false;
                let name = format!("{key}{{{label}=\"{value}\"}}");
                for i in p.first..p.last {
                    let k = p.kernel_at(i);
                    let d = increment(&mut rng, k, s);
                    let reset = p.reset_at(i);
                    let prev = v;
                    v = if reset { d } else { v + d };
                    let t = self.time(i);
                    let labels = format!("job=\"remote-vm\",instance=\"{}\",{label}=\"{value}\"", p.instance);
                    writeln!(om, "{metric}{{{labels}}} {v} {t}")?;
                    writeln!(vm, "{metric}{{{labels}}} {v} {}", t * 1000)?;
                    if !in_range(t) {
                        continue;
                    }
                    let g = truth.entry(k).or_default();
                    let c = g.counts.entry(name.clone()).or_default();
                    // The first sample in the range is the base; every later one
                    // adds its increment. A restart shows as a drop where the
                    // counter had grown (from 0 it cannot: its count is still right).
                    if seen {
                        *c += d;
                        if reset && v < prev {
                            g.resets += 1;
                        }
                    }
                    seen = true;
                }
            }
        }
        writeln!(om, "# EOF")?;
        om.flush()?;
        vm.flush()?;
        Ok(())
    }
}

/// A running engine.
struct Engine {
    name: String,
    url: String,
    /// The sample limit is lowered.
    lowered: bool,
    process: Guard,
}

impl Engine {
    /// Runs `cmd` (its stderr to `log`) until `ready_path` answers 200.
    fn start(name: &str, mut cmd: Command, port: u16, ready_path: &str, log: &Path, lowered: bool) -> Result<Engine> {
        let process = Guard(
            cmd.stdout(Stdio::null())
                .stderr(std::fs::File::create(log)?)
                .spawn()
                .with_context(|| format!("start {name}"))?,
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&url, ready_path, name, log)?;
        Ok(Engine {
            name: name.to_string(),
            url,
            lowered,
            process,
        })
    }

    /// SIGTERM and wait (VictoriaMetrics writes its in-memory parts then).
    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.process.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_ready(url: &str, path: &str, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let target = url.trim_start_matches("http://");
    while !matches!(remote_vm_prom::get(target, path), Ok((200, _))) {
        if Instant::now() > deadline {
            bail!("{what} did not become ready within 180 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// A Prometheus binary over a copy of `blocks`.
fn prometheus(binary: &Path, name: &str, blocks: &Path, dir: &Path, port: u16, max_samples: Option<u64>) -> Result<Engine> {
    let data = dir.join(format!("{name}-data"));
    if !data.exists() {
        sh(Command::new("cp").arg("-a").arg(blocks).arg(&data))?;
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n")?;
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--storage.tsdb.retention.time=3650d")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    if let Some(n) = max_samples {
        cmd.arg(format!("--query.max-samples={n}"));
    }
    Engine::start(name, cmd, port, "/-/ready", &log, max_samples.is_some())
}

fn victoria(binary: &Path, dir: &Path, port: u16) -> Result<Engine> {
    let data = dir.join("victoria-data");
    let _ = std::fs::remove_dir_all(&data);
    let log = dir.join("victoria.log");
    let mut cmd = Command::new(binary);
    cmd.arg(format!("-storageDataPath={}", data.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=100y");
    Engine::start("VictoriaMetrics", cmd, port, "/health", &log, false)
}

/// VictoriaMetrics' import API, fed through `curl -T -` (streamed: a large
/// fleet is never a file, nor in memory).
fn import(engine: &Engine) -> Result<std::process::Child> {
    Command::new("curl")
        .args(["-sS", "--fail", "-X", "POST", "-T", "-"])
        .arg(format!("{}/api/v1/import/prometheus", engine.url))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("start curl for the import")
}

/// `compare --format json` against `engine`: the document, or the error line.
fn compare(root: &Path, engine: &Engine, end: f64, days: u64, mode: &str, chunk: Option<u64>) -> Result<std::result::Result<Value, String>> {
    let mut cmd = Command::new(root.join("target/release/remote-vm-daemon"));
    cmd.args(["compare", "--prometheus", &engine.url, "--range", &format!("{days}d"), "--end", &format!("{end:.3}"), "--mode", mode, "--format", "json"]);
    if let Some(c) = chunk {
        cmd.args(["--chunk", &format!("{c}s")]);
    }
    let out = cmd
        .output()
        .context("run compare")?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(Ok(serde_json::from_slice(&out.stdout).context("compare's JSON")?))
}

/// Differences between compare's groups and the truth.
fn differences(doc: &Value, truth: &BTreeMap<Kernel, Truth>) -> Vec<String> {
    let mut out = Vec::new();
    let groups = doc["groups"].as_array().cloned().unwrap_or_default();
    // The fields scripts depend on (never renamed or removed).
    for key in ["range", "groups"] {
        if doc.get(key).is_none() {
            out.push(format!("the JSON has no {key}"));
        }
    }
    for g in &groups {
        for key in ["patched", "series", "release", "hosts", "counts", "resets"] {
            if g.get(key).is_none() {
                out.push(format!("a group has no {key}"));
            }
        }
    }
    let text = |g: &Value, key: &str| g[key].as_str().unwrap_or("").to_string();
    let got: BTreeMap<(String, String, String), &Value> =
        groups.iter().map(|g| ((text(g, "patched"), text(g, "series"), text(g, "release")), g)).collect();
    for (k, t) in truth {
        let Some(g) = got.get(&(k.0.to_string(), k.1.to_string(), k.2.to_string())) else {
            out.push(format!("no group {k:?}"));
            continue;
        };
        if g["hosts"].as_u64() != Some(t.hosts.len() as u64) {
            out.push(format!("{k:?}: hosts {} want {}", g["hosts"], t.hosts.len()));
        }
        if g["resets"].as_u64() != Some(t.resets) {
            out.push(format!("{k:?}: resets {} want {}", g["resets"], t.resets));
        }
        for (name, want) in &t.counts {
            let have = g["counts"][name].as_f64();
            if have != Some(*want as f64) {
                out.push(format!("{k:?}: {name} {have:?} want {want}"));
            }
        }
    }
    if got.len() != truth.len() {
        out.push(format!("{} groups, want {}", got.len(), truth.len()));
    }
    out
}

/// Every dashboard and rule expression evaluates (no error) on the engine.
fn expressions(root: &Path, engine: &Engine, end: f64) -> Result<(usize, Vec<String>)> {
    let api = remote_vm_prom::Prometheus::new(remote_vm_prom::Client::new(&engine.url)?);
    let mut exprs = Vec::new();
    for d in [dashboards::host(), dashboards::fleet_dashboard()] {
        for (title, expr) in dashboards::queries(&d) {
            let q = dashboards::substitute(&expr, "5m");
            // label_values() is Grafana's, not PromQL: its selector is.
            let q = match promtest::label_values(&q) {
                Some((sel, _)) => sel.to_string(),
                None => q,
            };
            exprs.push((title, q));
        }
    }
    let rules: Value = serde_saphyr::from_str(&std::fs::read_to_string(root.join("dashboards/remote-vm.rules.yml"))?)
        .map_err(|e| anyhow::anyhow!("dashboards/remote-vm.rules.yml: {e}"))?;
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let name = rule["record"].as_str().or(rule["alert"].as_str()).unwrap_or("rule");
            if let Some(e) = rule["expr"].as_str() {
                exprs.push((format!("rule {name}"), e.trim().to_string()));
            }
        }
    }
    let mut failures = Vec::new();
    for (title, q) in &exprs {
        if let Err(e) = api.query(q, Some(end)) {
            failures.push(format!("{}: {title}: {e}", engine.name));
        }
    }
    Ok((exprs.len(), failures))
}

/// The newer engines' binaries, unpacked from sid's packages.
fn newer_engines(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join("target/engines");
    std::fs::create_dir_all(&dir)?;
    let apt = Apt::private(root, apt::ARCHIVE_SUITES)?;
    let mut out = Vec::new();
    for (package, binary) in [("prometheus", "usr/bin/prometheus"), ("victoria-metrics", "usr/bin/victoria-metrics")] {
        let tree = dir.join(package);
        if !tree.join(binary).exists() {
            let deb = apt.download(package, None, &dir)?;
            say!("fleet: unpacking {}", deb.display());
            sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
            let version = crate::util::sh_output(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg("Version"))?;
            std::fs::write(tree.join(".version"), version.trim())?;
        }
        out.push(tree.join(binary));
    }
    Ok((out.remove(0), out.remove(0)))
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let dir = root.join(format!("target/fleet-test-{}", args.hosts));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (prom3, vmbin) = newer_engines(root)?;
    for (what, bin) in [("Prometheus", PathBuf::from("prometheus")), ("Prometheus 3", prom3.clone()), ("VictoriaMetrics", vmbin.clone())] {
        let v = Command::new(&bin).arg(if what == "VictoriaMetrics" { "-version" } else { "--version" }).output().context("engine --version")?;
        let text = format!("{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
        let package = bin.parent().and_then(Path::parent).and_then(Path::parent).map(|t| t.join(".version"));
        let package = package.and_then(|p| std::fs::read_to_string(p).ok()).map(|v| format!(" (package {v})")).unwrap_or_default();
        say!("fleet: {what}: {}{package}", text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim());
    }
    // The last sample an hour ago, on the 5-minute grid; the range ends
    // between two samples (so no engine's window edge falls on one).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let last = (now - 3600) / INTERVAL_S * INTERVAL_S;
    let end = last as f64 + 150.0;
    let start = end - (args.days * 86400) as f64;
    let fleet = Fleet::new(args.hosts, args.days, last);
    let om = dir.join("fleet.om");
    let blocks = dir.join("blocks");
    let victoria_engine = victoria(&vmbin, &dir, 19494)?;
    let mut truth = BTreeMap::new();
    let (mut generated, mut converted) = (Duration::ZERO, Duration::ZERO);
    // In shards of hosts: the OpenMetrics file of 10,000 hosts would not fit
    // the disk. Each shard's blocks go beside the others' (Prometheus takes
    // blocks that overlap in time).
    for shard in (0..args.hosts).step_by(SHARD_HOSTS) {
        let hosts = shard..(shard + SHARD_HOSTS).min(args.hosts);
        let mut curl = import(&victoria_engine)?;
        let t = Instant::now();
        fleet.write(hosts, std::fs::File::create(&om)?, curl.stdin.take().context("curl's stdin")?, start, end, &mut truth)?;
        if !curl.wait()?.success() {
            bail!("the import into VictoriaMetrics failed; see {}", dir.join("victoria.log").display());
        }
        generated += t.elapsed();
        let t = Instant::now();
        let out = dir.join(format!("blocks-{shard}"));
        sh(Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h"])
            .arg(&om)
            .arg(&out)
            .stdout(Stdio::null()))?;
        std::fs::create_dir_all(&blocks)?;
        for b in std::fs::read_dir(&out)? {
            let b = b?;
            std::fs::rename(b.path(), blocks.join(b.file_name()))?;
        }
        converted += t.elapsed();
        let _ = std::fs::remove_file(&om);
    }
    sh(Command::new("curl").args(["-sS", "--fail"]).arg(format!("{}/internal/force_flush", victoria_engine.url)).stdout(Stdio::null()))?;
    let mut victoria_engine = Some(victoria_engine);
    say!(
        "fleet: {} hosts × {} samples (5 min) × {} series written (and streamed into VictoriaMetrics) in {:.0} s, promtool tsdb create-blocks-from openmetrics {:.0} s; {} groups: {}",
        args.hosts,
        fleet.samples,
        SERIES.len() + 1,
        generated.as_secs_f64(),
        converted.as_secs_f64(),
        truth.len(),
        truth.iter().map(|(k, v)| format!("{}/{}/{} {} hosts", k.0, k.1, k.2, v.hosts.len())).collect::<Vec<_>>().join(", ")
    );

    // The lowered limit: half the raw mode's largest query (the reads, 3
    // series a host over the range); chunks of an eighth of the range stay
    // well under it.
    let raw_largest = 3 * args.hosts * fleet.samples;
    // compare takes 256 MiB an answer (some 25 bytes a sample) and 50 M
    // samples in all; Prometheus 50 M a query by default.
    let raw_feasible = raw_largest <= 8_000_000;
    let lowered_limit = (raw_largest / 2) as u64;
    let lowered_chunk = args.days * 86400 / 8;
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut timings = Vec::new();
    // Where the raw mode cannot run at all, the lowered round shows nothing
    // more (the 1000-host run in `cargo xtask test` shows it).
    let rounds: &[&str] = if raw_feasible { &["default limits", "lowered sample limit"] } else { &["default limits"] };
    for &round in rounds {
        let lowered = (round != "default limits").then_some(lowered_limit);
        let mut engines = vec![
            prometheus(Path::new("prometheus"), "prometheus-2", &blocks, &dir, 19492, lowered)?,
            prometheus(&prom3, "prometheus-3", &blocks, &dir, 19493, lowered)?,
        ];
        match lowered {
            None => engines.extend(victoria_engine.take()),
            // Its -search.maxSamplesPerQuery counts whole storage blocks (up to
            // 8192 samples of a series): a chunk of a series that fits one block
            // costs the whole block, so chunks cannot stay under a limit the
            // raw query passes. Both modes are held to the totals above.
            Some(_) => say!("fleet: VictoriaMetrics: no lowered-limit round (its sample limit counts whole storage blocks, not the samples of a window)"),
        }
        for e in &engines {
            // Without raw, auto is chunked with its own chunk: one run says both.
            let modes: &[&str] = match (e.lowered, raw_feasible) {
                (true, _) => &["raw", "chunked"],
                (false, true) => &["raw", "chunked", "auto"],
                (false, false) => &["auto"],
            };
            for mode in modes {
                if *mode == "raw" && !raw_feasible {
                    say!("fleet: {} ({round}): raw skipped: its largest query holds {raw_largest} samples, past what one answer takes", e.name);
                    continue;
                }
                let t = Instant::now();
                let chunk = (e.lowered && *mode == "chunked").then_some(lowered_chunk);
                let got = compare(root, e, end, args.days, mode, chunk)?;
                let secs = t.elapsed().as_secs_f64();
                checked += 1;
                match (got, e.lowered && *mode == "raw") {
                    (Err(line), true) => say!("fleet: {} ({round}): raw refused as it must be: {line}", e.name),
                    (Ok(_), true) => failures.push(format!("{}: raw mode passed the lowered sample limit", e.name)),
                    (Err(line), false) => failures.push(format!("{} ({round}) --mode {mode}: {line}", e.name)),
                    (Ok(doc), false) => {
                        let d = differences(&doc, &truth);
                        say!(
                            "fleet: {} ({round}) --mode {mode}: {} in {secs:.1} s ({} queries, chunk {}, {} series-chunks raw): {}",
                            e.name,
                            doc["mode"],
                            doc["queries"],
                            doc["chunk_seconds"],
                            doc["raw_chunks"],
                            if d.is_empty() { "equals the known totals".to_string() } else { format!("{} differences", d.len()) }
                        );
                        timings.push(format!("{} {round} {mode}: {secs:.1} s", e.name));
                        // auto: raw while the expected samples are few, chunked past that.
                        let expected = (args.hosts * (SERIES.len()) * fleet.samples) as f64;
                        let want = if expected > cat::COMPARE_AUTO_RAW_MAX_SAMPLES { "chunked" } else { "raw" };
                        if *mode == "auto" && doc["mode"] != want {
                            failures.push(format!("{}: auto chose {} for about {expected} samples, want {want}", e.name, doc["mode"]));
                        }
                        failures.extend(d.into_iter().take(10).map(|x| format!("{} {mode}: {x}", e.name)));
                    }
                }
            }
            if !e.lowered {
                let (n, f) = expressions(root, e, end)?;
                say!("fleet: {}: {n} dashboard and rule expressions evaluated, {} failed", e.name, f.len());
                checked += n;
                failures.extend(f);
            }
        }
        for e in engines {
            e.stop();
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            say!("fleet: FAIL {f}");
        }
        bail!("fleet-test: {} of {checked} checks failed (files and logs in {})", failures.len(), dir.display());
    }
    say!("fleet: {checked} checks passed on three engines ({} hosts, {} days); timings: {}", args.hosts, args.days, timings.join("; "));
    Ok(())
}
