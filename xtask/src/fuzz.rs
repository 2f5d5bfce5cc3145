//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer with
//! AddressSanitizer, on the stable toolchain through RUSTC_BOOTSTRAP=1). Each
//! target first replays its committed corpus (`fuzz/corpus/TARGET`), then runs
//! for the given time within the budgets `fuzz/Cargo.toml` declares. New
//! inputs go to `target/fuzz/corpus/TARGET`; `--merge` adds those that reach
//! new code to the committed corpus. A finding fails the run and is left in
//! `target/fuzz/artifacts/` with the command that replays it.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{say, sh};

/// The cargo-fuzz release `cargo xtask setup --test` installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// One target and its budgets, as `fuzz/Cargo.toml` declares them.
#[derive(Debug)]
struct Target {
    name: String,
    max_len: u64,
    timeout_s: u64,
    malloc_limit_mb: u64,
    rss_limit_mb: u64,
}

impl Target {
    fn flags(&self) -> Vec<String> {
        vec![
            format!("-max_len={}", self.max_len),
            format!("-timeout={}", self.timeout_s),
            format!("-malloc_limit_mb={}", self.malloc_limit_mb),
            format!("-rss_limit_mb={}", self.rss_limit_mb),
        ]
    }
}

/// Every `[[bin]]` of `fuzz/Cargo.toml` with its `[package.metadata.budgets]` entry.
fn targets(root: &Path) -> Result<Vec<Target>> {
    let path = root.join("fuzz/Cargo.toml");
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(&path)?).with_context(|| path.display().to_string())?;
    let budgets = &manifest["package"]["metadata"]["budgets"];
    let bins = manifest.get("bin").and_then(|b| b.as_array()).context("fuzz/Cargo.toml has no [[bin]]")?;
    bins.iter()
        .map(|bin| {
            let name = bin.get("name").and_then(|n| n.as_str()).context("a [[bin]] without a name")?;
            let budget = budgets
                .get(name)
                .with_context(|| format!("fuzz/Cargo.toml: target {name} has no [package.metadata.budgets] entry"))?;
            let field = |key: &str| {
                budget
                    .get(key)
                    .and_then(|v| v.as_integer())
                    .and_then(|v| u64::try_from(v).ok())
                    .with_context(|| format!("fuzz/Cargo.toml: budgets.{name}.{key} missing"))
            };
            Ok(Target {
                name: name.to_string(),
                max_len: field("max_len")?,
                timeout_s: field("timeout_s")?,
                malloc_limit_mb: field("malloc_limit_mb")?,
                rss_limit_mb: field("rss_limit_mb")?,
            })
        })
        .collect()
}

pub struct Args {
    /// Seconds each target runs after replaying its corpus (0: replay only).
    pub seconds: u64,
    /// Only these targets (default: all).
    pub only: Vec<String>,
    /// Add the new inputs that reach new code to the committed corpus.
    pub merge: bool,
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let all = targets(root)?;
    for name in &args.only {
        if !all.iter().any(|t| &t.name == name) {
            bail!("no fuzz target {name} (targets: {})", all.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "));
        }
    }
    let chosen: Vec<&Target> = all.iter().filter(|t| args.only.is_empty() || args.only.contains(&t.name)).collect();
    let out = root.join("target/fuzz");
    say!("fuzz: building {} target(s) with cargo fuzz (libFuzzer, AddressSanitizer)", chosen.len());
    sh(crate::cargo(root)
        .args(["fuzz", "build", "--target-dir"])
        .arg(&out)
        .env("RUSTC_BOOTSTRAP", "1"))
    .context("cargo fuzz build (installed by `cargo xtask setup --test`)")?;
    let bin_dir = out.join("x86_64-unknown-linux-gnu/release");
    for t in chosen {
        let bin = bin_dir.join(&t.name);
        let corpus = root.join("fuzz/corpus").join(&t.name);
        let new = out.join("corpus").join(&t.name);
        let artifacts = out.join("artifacts").join(&t.name);
        let logs = out.join("logs");
        for dir in [&new, &artifacts, &logs] {
            std::fs::create_dir_all(dir)?;
        }
        let committed = std::fs::read_dir(&corpus).with_context(|| corpus.display().to_string())?.count();
        // Replay: every committed input once, nothing else.
        let log = logs.join(format!("{}-replay.log", t.name));
        libfuzzer(&bin, t, &artifacts, &log, &["-runs=0".into()], &[&corpus])?;
        say!("fuzz: {}: the committed corpus ({committed} inputs) replays clean", t.name);
        if args.seconds > 0 {
            let log = logs.join(format!("{}.log", t.name));
            let runs = libfuzzer(&bin, t, &artifacts, &log, &[format!("-max_total_time={}", args.seconds)], &[&new, &corpus])?;
            say!(
                "fuzz: {}: {runs} runs in {} s, no finding (max_len {}, {} s and {} MiB per input, {} MiB in all; log {})",
                t.name,
                args.seconds,
                t.max_len,
                t.timeout_s,
                t.malloc_limit_mb,
                t.rss_limit_mb,
                log.display()
            );
        }
        if args.merge {
            let log = logs.join(format!("{}-merge.log", t.name));
            libfuzzer(&bin, t, &artifacts, &log, &["-merge=1".into()], &[&corpus, &new])?;
            let now = std::fs::read_dir(&corpus)?.count();
            say!("fuzz: {}: corpus {committed} → {now} inputs (merged from {})", t.name, new.display());
        }
    }
    Ok(())
}

/// Runs a fuzz target; its output goes to `log`. Returns the runs it made.
fn libfuzzer(bin: &Path, t: &Target, artifacts: &Path, log: &Path, extra: &[String], dirs: &[&PathBuf]) -> Result<u64> {
    let file = std::fs::File::create(log)?;
    let status = Command::new(bin)
        .args(t.flags())
        .args(extra)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(dirs)
        // As cargo fuzz runs them.
        .env("ASAN_OPTIONS", "detect_odr_violation=0")
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("run {}", bin.display()))?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        let finding = text
            .lines()
            .find(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer") || l.contains("ERROR: AddressSanitizer"))
            .unwrap_or("no reason printed");
        let artifact = text
            .lines()
            .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().to_string()))
            .unwrap_or_else(|| "none written".into());
        bail!(
            "fuzz target {} failed ({status}): {finding}\n  input: {artifact}\n  replay: {} {artifact}\n  log: {}",
            t.name,
            bin.display(),
            log.display()
        );
    }
    Ok(text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .unwrap_or(0))
}
