//! Dashboards and rules against a real Prometheus (Debian's `prometheus`) that
//! scrapes the daemon inside both shared kernels at once (each VM running the
//! classification workload in a loop) and the host daemon.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use remote_vm_common::catalog as cat;
use remote_vm_prom::Prometheus;

use crate::{dashboards, vm, util::{say, sh}};

pub const PROMETHEUS_PORT: u16 = 19490;
const HOST_DAEMON_PORT: u16 = 19413;

/// `GET path` on 127.0.0.1:`port`; the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let (status, body) = remote_vm_prom::get(&format!("127.0.0.1:{port}"), path)?;
    if status != 200 {
        bail!("GET {path}: {status}: {body}");
    }
    Ok(body)
}

/// The Prometheus on 127.0.0.1:`port`.
fn prometheus(port: u16) -> Result<Prometheus> {
    Ok(Prometheus::new(remote_vm_prom::Client::new(&format!("127.0.0.1:{port}"))?))
}

/// An instant query through the Prometheus HTTP API: the result vector.
pub fn query(port: u16, expr: &str) -> Result<Vec<Value>> {
    Ok(prometheus(port)?.query(expr, None)?)
}

/// Grafana's `label_values(SELECTOR, LABEL)` variable query, split.
pub fn label_values(q: &str) -> Option<(&str, &str)> {
    let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim(), label.trim()))
}

/// What Grafana asks for `label_values`: `/api/v1/label/LABEL/values?match[]=SELECTOR`.
fn values(port: u16, selector: &str, label: &str) -> Result<Vec<Value>> {
    Ok(prometheus(port)?.label_values(label, &[selector])?)
}

/// Debian's Prometheus on 127.0.0.1:`port` with `dir`/prometheus.yml, its
/// data in `dir`/data and its log in `dir`/prometheus.log.
pub fn start_prometheus(dir: &Path, port: u16) -> Result<Guard> {
    Ok(Guard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
            .spawn()
            .context("start prometheus (Debian package prometheus)")?,
    ))
}

/// A child process killed on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two serving VMs (patched, unpatched), the host daemon and a Prometheus
/// scraping all three every second, with the rules loaded.
pub struct Lab {
    pub vms: Vec<vm::ServingVm>,
    _host_daemon: Guard,
    _prometheus: Guard,
    pub dir: PathBuf,
}

impl Lab {
    /// `workload`: extra kernel arguments for the serving guests (`rvm.serve_delay=`,
    /// `rvm.serve_seconds=`).
    pub fn start(root: &Path, name: &str, kernels: &[vm::Kernel], workload: &str) -> Result<Lab> {
        let dir = root.join("target").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let initramfs = dir.join("initramfs.cpio");
        vm::write_test_initramfs(root, &initramfs)?;
        let mut vms = Vec::new();
        for (i, k) in kernels.iter().enumerate() {
            vms.push(vm::ServingVm::start(k, &initramfs, &dir.join(&k.name), 19411 + i as u16, workload)?);
        }
        say!("starting the host daemon on 127.0.0.1:{HOST_DAEMON_PORT}");
        let host_daemon = Guard(
            Command::new(root.join("target/release/remote-vm-daemon"))
                .args(["run", "--listen", &format!("127.0.0.1:{HOST_DAEMON_PORT}"), "--log-level", "warn", "--web.socket", ""])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("host-daemon.log"))?)
                .spawn()
                .context("start the host daemon")?,
        );
        for v in &mut vms {
            v.wait_serving(Duration::from_secs(120))?;
            say!("VM {} serves on 127.0.0.1:{}", v.kernel.name, v.port);
        }
        let targets: Vec<String> = vms
            .iter()
            .map(|v| format!("127.0.0.1:{}", v.port))
            .chain([format!("127.0.0.1:{HOST_DAEMON_PORT}")])
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: remote-vm\n    static_configs:\n      - targets: [{}]\n",
            root.join("dashboards/remote-vm.rules.yml").display(),
            targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        say!("starting Prometheus on 127.0.0.1:{PROMETHEUS_PORT} scraping {}", targets.join(", "));
        let prometheus = start_prometheus(&dir, PROMETHEUS_PORT)?;
        Ok(Lab {
            vms,
            _host_daemon: host_daemon,
            _prometheus: prometheus,
            dir,
        })
    }

    /// Waits until every target has been scraped up for `seconds`.
    pub fn wait_scraped(&self, seconds: u64) -> Result<()> {
        let targets = self.vms.len() + 1;
        say!("letting Prometheus scrape for {seconds} s");
        let deadline = Instant::now() + Duration::from_secs(seconds + 120);
        loop {
            let ok = query(PROMETHEUS_PORT, &format!("count_over_time(up[{seconds}s]) >= {} and up == 1", seconds - 2))
                .map(|r| r.len())
                .unwrap_or(0);
            if ok == targets {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Prometheus did not scrape all {targets} targets; see {}", self.dir.display());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The dashboard and rules test.
pub fn dashboard_test(root: &Path) -> Result<()> {
    say!("checking the dashboards are generated from xtask/src/dashboards.rs");
    for (path, contents) in dashboards::files()? {
        let committed = std::fs::read_to_string(root.join(path)).unwrap_or_default();
        if committed != contents {
            bail!("{path} is stale: run `cargo xtask dashboards`");
        }
    }
    let host: Value = serde_json::from_str(&std::fs::read_to_string(root.join("dashboards/remote-vm-host.json"))?)?;
    let fleet: Value = serde_json::from_str(&std::fs::read_to_string(root.join("dashboards/remote-vm-fleet.json"))?)?;
    dashboards::lint(&host)?;
    dashboards::lint(&fleet)?;
    grafana_schema_check(root, &[("host", &host), ("fleet", &fleet)])?;
    say!("promtool check rules / test rules");
    sh(Command::new("promtool").args(["check", "rules"]).arg(root.join("dashboards/remote-vm.rules.yml")))?;
    sh(Command::new("promtool").args(["test", "rules"]).arg(root.join("dashboards/remote-vm.rules.test.yml")))?;
    sh(Command::new("promtool").args(["check", "config", "--syntax-only"]).arg(root.join("dashboards/prometheus.yml")))?;

    // The workload starts 20 s after the daemons serve (Prometheus scrapes its
    // counters at zero first) and runs 40 s, so `compare` can be held to the
    // daemons' own final numbers afterwards.
    let pair = vm::shared_kernels(root);
    if pair.len() != 2 {
        say!("dashboard-test: the queries against live daemons skipped (they need the shared 6.12 pair)");
        return Ok(());
    }
    let mut lab = Lab::start(root, "dashboard-test", &pair, "rvm.serve_delay=20 rvm.serve_seconds=40")?;
    lab.wait_scraped(30)?;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (dashboard, d) in [("host", &host), ("fleet", &fleet)] {
        for (title, expr) in dashboards::queries(d) {
            let q = dashboards::substitute(&expr, "10s");
            checked += 1;
            let result = match label_values(&q) {
                Some((selector, label)) => values(PROMETHEUS_PORT, selector, label),
                None => query(PROMETHEUS_PORT, &q),
            };
            match result {
                Ok(r) if r.is_empty() => failures.push(format!("{dashboard} / {title}: no series for {q}")),
                Ok(_) => {}
                Err(e) => failures.push(format!("{dashboard} / {title}: {e}")),
            }
        }
    }
    // Every rule parses in the running Prometheus, and the recorded series exist.
    let rules = prometheus(PROMETHEUS_PORT)?.rules()?;
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            checked += 1;
            if rule["health"] != "ok" {
                failures.push(format!("rule {}: health {} {}", rule["name"], rule["health"], rule["lastError"]));
            }
            if rule["type"] == "recording" {
                let name = rule["name"].as_str().unwrap_or("");
                if query(PROMETHEUS_PORT, name).map(|r| r.is_empty()).unwrap_or(true) {
                    failures.push(format!("recording rule {name}: no series"));
                }
            }
        }
    }
    // The patched VM shows a fast path, the unpatched none, the host cannot see.
    let reads = cat::READS.name;
    let ratio = format!("sum by (instance) (rate({reads}{{path=\"fast\"}}[10s])) / sum by (instance) (rate({reads}[10s]))");
    let ratio = ratio.as_str();
    let r = query(PROMETHEUS_PORT, ratio)?;
    let value = |port: u16| {
        r.iter()
            .find(|s| s["metric"]["instance"] == format!("127.0.0.1:{port}"))
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
    };
    for v in &lab.vms {
        let got = value(v.port);
        say!("fast-path ratio of {}: {got:?}", v.kernel.name);
        let ok = match v.kernel.expect() {
            _ if v.kernel.is_patched() => got.is_some_and(|x| x > 0.0),
            "unpatched" => got == Some(0.0),
            _ => true,
        };
        if !ok {
            failures.push(format!("fast-path ratio of {}: {got:?}", v.kernel.name));
        }
    }
    if value(HOST_DAEMON_PORT).is_some() {
        failures.push("the host daemon reports reads it cannot see".into());
    }
    for (port, patched, series) in lab
        .vms
        .iter()
        .map(|v| (v.port, if v.kernel.is_patched() { "yes" } else { "no" }, v.kernel.series()))
        .chain([(HOST_DAEMON_PORT, "unknown", "unknown")])
    {
        let q = format!("{}{{instance=\"127.0.0.1:{port}\",patched=\"{patched}\",series=\"{series}\"}}", cat::KERNEL_INFO.name);
        if query(PROMETHEUS_PORT, &q)?.len() != 1 {
            failures.push(format!("{q}: not exactly one series"));
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            say!("  FAIL {f}");
        }
        bail!("{} of {checked} dashboard/rule checks failed (lab kept in {})", failures.len(), lab.dir.display());
    }
    say!("dashboards and rules: {checked} queries and rules checked against Prometheus with data from both kernels and the host");
    compare_test(root, &mut lab)
}

/// `remote-vm-daemon compare` against this Prometheus equals the daemons' own
/// counters: the workload has stopped, and Prometheus saw every counter at zero
/// before it started.
fn compare_test(root: &Path, lab: &mut Lab) -> Result<()> {
    for v in &mut lab.vms {
        v.wait_for("vmtest: workload done", Duration::from_secs(180))?;
    }
    std::thread::sleep(Duration::from_secs(4));
    // The workload has stopped: the range may end now (the default end is a
    // minute back, for scrapes still being written).
    let now = format!("{:.3}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64());
    let out = Command::new(root.join("target/release/remote-vm-daemon"))
        .args(["compare", "--prometheus", &format!("http://127.0.0.1:{PROMETHEUS_PORT}"), "--range", "30m", "--end", &now])
        .args(["--selector", "job=\"remote-vm\"", "--format", "json"])
        .output()?;
    if !out.status.success() {
        bail!("compare failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    for fmt in ["table", "markdown"] {
        let t = Command::new(root.join("target/release/remote-vm-daemon"))
            .args(["compare", "--prometheus", &format!("http://127.0.0.1:{PROMETHEUS_PORT}"), "--range", "30m", "--format", fmt])
            .output()?;
        if !t.status.success() {
            bail!("compare --format {fmt} failed");
        }
        if fmt == "table" {
            println!("{}", String::from_utf8_lossy(&t.stdout));
        }
    }
    let groups = report["groups"].as_array().context("groups")?;
    let mut failures = Vec::new();
    for v in &lab.vms {
        let patched = if v.kernel.is_patched() { "yes" } else { "no" };
        let Some(g) = groups.iter().find(|g| g["patched"] == patched) else {
            failures.push(format!("no group patched={patched}"));
            continue;
        };
        if g["hosts"] != 1 {
            failures.push(format!("group patched={patched}: {} hosts, expected 1", g["hosts"]));
        }
        // Prometheus saw the counters at zero before the workload started.
        let first = query(PROMETHEUS_PORT, &format!("max(min_over_time({}{{instance=\"127.0.0.1:{}\"}}[30m]))", cat::READS.name, v.port))?;
        let first = first.first().and_then(|s| s["value"][1].as_str()).unwrap_or("?").to_string();
        if first != "0" {
            failures.push(format!("{}: Prometheus' first sample of reads is {first}, not 0: the workload started before the first scrape", v.kernel.name));
        }
        let own = crate::promtest::http_get(v.port, "/metrics")?;
        let value = |series: &str| -> f64 {
            own.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
                .and_then(|x| x.trim().parse().ok())
                .unwrap_or(f64::NAN)
        };
        let mut compared = 0;
        // compare's row keys and the series each one sums.
        let mut pairs: Vec<(String, String)> = Vec::new();
        for p in ["fast", "fallback", "slow"] {
            pairs.push((format!("reads{{path=\"{p}\"}}"), format!("{}{{path=\"{p}\"}}", cat::READS.name)));
        }
        for r in ["vma_lock_failed", "vma_unsuitable", "page_not_present"] {
            pairs.push((format!("fallbacks{{reason=\"{r}\"}}"), format!("{}{{reason=\"{r}\"}}", cat::FALLBACKS.name)));
        }
        pairs.push(("writes".into(), cat::WRITES.name.into()));
        pairs.push(("lockless_bytes_discarded".into(), cat::LOCKLESS_BYTES_DISCARDED.name.into()));
        for (key, series) in &pairs {
            let got = g["counts"][key.as_str()].as_f64().unwrap_or(f64::NAN);
            let want = value(series);
            compared += 1;
            if got != want {
                failures.push(format!("{}: compare says {key} = {got}, the daemon exported {want}", v.kernel.name));
            }
        }
        say!(
            "compare: {} (patched={patched}): {compared} counts equal the daemon's own ({} reads fast, {} slow)",
            v.kernel.name,
            g["counts"]["reads{path=\"fast\"}"],
            g["counts"]["reads{path=\"slow\"}"]
        );
    }
    if !failures.is_empty() {
        for f in &failures {
            say!("  FAIL {f}");
        }
        bail!("compare disagrees with the daemons (lab kept in {})", lab.dir.display());
    }
    Ok(())
}

/// Type-checks each dashboard (without the import-only `__inputs`/`__requires`)
/// against the `Dashboard` type of Grafana's published schema package
/// (`@grafana/schema` from the npm registry) with `tsc --strict`.
fn grafana_schema_check(root: &Path, dashboards: &[(&str, &Value)]) -> Result<()> {
    const SCHEMA: &str = "@grafana/schema@13.2.3";
    const TYPESCRIPT: &str = "typescript@5.9.3";
    let dir = root.join("target/grafana-schema");
    std::fs::create_dir_all(&dir)?;
    if !dir.join("node_modules/@grafana/schema/package.json").is_file() || !dir.join("node_modules/typescript").is_dir() {
        say!("installing {SCHEMA} and {TYPESCRIPT} from the npm registry into {}", dir.display());
        sh(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .args([SCHEMA, TYPESCRIPT]))
        .context("npm install (Node.js and npm are needed for the Grafana schema check)")?;
    }
    let mut files = Vec::new();
    for (name, d) in dashboards {
        let mut d = (*d).clone();
        if let Some(o) = d.as_object_mut() {
            o.remove("__inputs");
            o.remove("__requires");
        }
        let file = dir.join(format!("{name}.ts"));
        std::fs::write(
            &file,
            format!(
                "import type {{ Dashboard }} from '@grafana/schema';\nexport const dashboard: Dashboard = {};\n",
                serde_json::to_string_pretty(&d)?
            ),
        )?;
        files.push(file);
    }
    say!("type-checking the dashboards against {SCHEMA}'s Dashboard");
    sh(Command::new(dir.join("node_modules/.bin/tsc"))
        .args(["--noEmit", "--strict", "--skipLibCheck", "--moduleResolution", "bundler", "--module", "esnext", "--target", "es2022"])
        .args(&files)
        .current_dir(&dir))
}
