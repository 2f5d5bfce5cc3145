//! The kernel matrix: kernel × probe (mode, or why not) and kernel × class
//! (expected vs counted), from the guests' reports and a native `check` on the
//! host; printed and written to `target/vm-test/matrix.md`.
use std::fmt::Write as _;

use remote_vm_common::{
    Point,
    catalog::{self, CONTEXT_REMOTE, LOCK_WRITE},
    classify::{Level, Path, Reason},
};
use serde_json::Value;

/// One column of the matrix.
pub struct Row {
    pub kernel: String,
    pub origin: String,
    pub expect: String,
    /// `remote-vm-daemon check --format json` output (docs/operating.md: "check --format json").
    pub check: Value,
    /// The guest's checks (`name`, `expected`, `got`, `ok`); empty for the host.
    pub checks: Vec<Value>,
    pub passed: Option<bool>,
}

/// The classes shown, as (row title, check name in the `first` scenario — the
/// default — or in `callers`, which attaches the opt-in VMA-step probe).
fn classes() -> Vec<(&'static str, String)> {
    let first = |name: &str, labels: String| format!("first.classes.{name}{{{labels}}}");
    let vma_probed = |name: &str, labels: String| format!("callers.classes.{name}{{{labels}}}");
    let path = |p: Path| format!("path={}", p.label());
    let reason = |r: Reason| format!("reason={}", r.label());
    vec![
        ("reads fast", first(catalog::READS.name, path(Path::Fast))),
        ("reads fallback", first(catalog::READS.name, path(Path::Fallback))),
        ("reads slow", first(catalog::READS.name, path(Path::Slow))),
        ("writes", first(catalog::WRITES.name, String::new())),
        (
            "fallback: vma_lock_failed_or_unsuitable (default)",
            first(catalog::FALLBACKS.name, reason(Reason::VmaLockFailedOrUnsuitable)),
        ),
        ("fallback: vma_lock_failed (lock_vma_under_rcu probe)", vma_probed(catalog::FALLBACKS.name, reason(Reason::VmaLockFailed))),
        ("fallback: vma_unsuitable (lock_vma_under_rcu probe)", vma_probed(catalog::FALLBACKS.name, reason(Reason::VmaUnsuitable))),
        ("fallback: page_not_present", first(catalog::FALLBACKS.name, reason(Reason::PageNotPresent))),
        ("lockless bytes", first(catalog::FALLBACK_LOCKLESS_BYTES.name, String::new())),
        ("discarded lockless bytes", first(catalog::LOCKLESS_BYTES_DISCARDED.name, String::new())),
        ("multi-VMA fast reads (lock_vma_under_rcu probe)", vma_probed(catalog::MULTI_VMA_READS.name, path(Path::Fast))),
        ("FOLL_ANON file-backed lockless", first(catalog::FOLL_ANON_FILE_BACKED.name, String::new())),
        ("lockless walks at PMD", first(catalog::FOLIO_WALKS.name, format!("level={}", Level::Pmd.label()))),
        (
            "remote mmap_lock write waits (fentry_rw)",
            format!("kprobe_callers.classes.{}{{context={CONTEXT_REMOTE},mode={LOCK_WRITE}}}", catalog::MMAP_LOCK_WAIT.count()),
        ),
        ("GUP calls (slow)", first(catalog::GUP_CALLS.name, path(Path::Slow))),
        ("100k-read load: exact", format!("first.load.hits.{}", Point::AccessRemoteVmEntry.name())),
    ]
}

/// Each probe of a `check` report and its mode, or why not, shortened for a table cell.
fn probes(check: &Value) -> Vec<(String, String)> {
    let empty = Vec::new();
    check["probes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|p| {
            let probe = p["probe"].as_str().unwrap_or("?").to_string();
            let cell = if p["attached"] == true {
                p["mode"].as_str().unwrap_or("?").to_string()
            } else {
                let reasons: Vec<String> = p["reasons"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .map(|r| match r["mode"].as_str() {
                        Some(m) => format!("{m}: {}", r["error"].as_str().unwrap_or("")),
                        None => r["error"].as_str().unwrap_or("").to_string(),
                    })
                    .collect();
                format!("none: {}", short_reason(&reasons.join("; ")))
            };
            (probe, cell)
        })
        .collect()
}

/// The gist of a failure reason.
fn short_reason(why: &str) -> String {
    let w = why.trim_start_matches('(').trim_end_matches(')');
    if w.contains("not tried") {
        "needs access_remote_vm".into()
    } else if w.contains("unknown BTF type") {
        "function not in this kernel".into()
    } else if w.contains("kprobe/type") && w.contains("Operation not permitted") {
        "fentry EPERM, no kprobe PMU".into()
    } else if w.contains("no BTF") {
        "no BTF".into()
    } else {
        w.chars().take(60).collect()
    }
}

fn cell_of<'a>(checks: &'a [Value], name: &str) -> Option<&'a Value> {
    checks.iter().find(|c| c["name"] == name)
}

pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| | {} |", rows.iter().map(|r| r.kernel.as_str()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(rows.len()));
    let line = |out: &mut String, title: &str, cells: Vec<String>| {
        let _ = writeln!(out, "| {title} | {} |", cells.join(" | "));
    };
    line(&mut out, "kernel", rows.iter().map(|r| r.origin.clone()).collect());
    line(&mut out, "expected", rows.iter().map(|r| r.expect.clone()).collect());
    let release = |r: &Row| r.check["kernel"]["release"].as_str().unwrap_or("?").to_string();
    line(&mut out, "release", rows.iter().map(release).collect());
    let patched = |r: &Row| r.check["patched"]["value"].as_str().unwrap_or("?").to_string();
    line(&mut out, "`patched`", rows.iter().map(patched).collect());
    let series = |r: &Row| r.check["series"]["value"].as_str().unwrap_or("?").to_string();
    line(&mut out, "`series`", rows.iter().map(series).collect());
    let all: Vec<Vec<(String, String)>> = rows.iter().map(|r| probes(&r.check)).collect();
    if let Some(first) = all.iter().find(|p| !p.is_empty()) {
        for (probe, _) in first {
            line(
                &mut out,
                &format!("probe `{probe}`"),
                all.iter()
                    .map(|p| p.iter().find(|(n, _)| n == probe).map_or("?".into(), |(_, c)| c.clone()))
                    .collect(),
            );
        }
    }
    for (title, name) in &classes() {
        line(
            &mut out,
            title,
            rows.iter()
                .map(|r| match cell_of(&r.checks, name) {
                    Some(c) => format!(
                        "{} {}/{}",
                        if c["ok"] == true { "✓" } else { "✗" },
                        c["got"].as_str().unwrap_or("?"),
                        c["expected"].as_str().unwrap_or("?")
                    ),
                    None if r.checks.is_empty() => "n/a (no workload run)".into(),
                    None => "-".into(),
                })
                .collect(),
        );
    }
    line(
        &mut out,
        "checks passed",
        rows.iter()
            .map(|r| {
                if r.checks.is_empty() {
                    return match r.passed {
                        Some(true) => "host tests ✓".into(),
                        Some(false) => "host tests ✗".into(),
                        None => "-".into(),
                    };
                }
                let ok = r.checks.iter().filter(|c| c["ok"] == true).count();
                format!("{ok}/{}", r.checks.len())
            })
            .collect(),
    );
    out.push_str("\nCells: probe mode, or `none` and why; class rows `✓ counted/expected` deltas of one workload run (`absent`: the family cannot exist there).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_from_check_json() {
        let check = serde_json::json!({
            "kernel": {"release": "6.12.117"},
            "patched": {"value": "yes", "why": "…"},
            "series": {"value": "v1", "why": "…"},
            "probes": [
                {"probe": "a_entry", "attached": true, "mode": "fentry", "reasons": []},
                {"probe": "b_exit", "attached": false, "mode": "none",
                 "reasons": [{"mode": null, "error": "not tried: it only refines a, which is not attached"}]},
            ],
        });
        let row = Row {
            kernel: "k".into(),
            origin: "o".into(),
            expect: "patched-v1".into(),
            check,
            checks: Vec::new(),
            passed: None,
        };
        let table = render(&[row]);
        assert!(table.contains("| release | 6.12.117 |"), "{table}");
        assert!(table.contains("| `patched` | yes |"), "{table}");
        assert!(table.contains("| `series` | v1 |"), "{table}");
        assert!(table.contains("| probe `a_entry` | fentry |"), "{table}");
        assert!(table.contains("| probe `b_exit` | none: needs access_remote_vm |"), "{table}");
    }
}

/// The page whose "Supported kernels" section holds the matrix.
pub const KERNELS_PAGE: &str = "docs/probes-and-kernels.md";

/// The markers around the matrix in `KERNELS_PAGE`.
const MATRIX_BEGIN: &str = "<!-- kernel-matrix: written by `cargo xtask vm-test --all-kernels` -->";
const MATRIX_END: &str = "<!-- kernel-matrix end -->";

/// Puts `table` (with the date of the run) between the markers of `KERNELS_PAGE`.
pub fn write_kernels_page(root: &std::path::Path, table: &str) -> anyhow::Result<()> {
    let path = root.join(KERNELS_PAGE);
    let text = std::fs::read_to_string(&path)?;
    let (Some(b), Some(e)) = (text.find(MATRIX_BEGIN), text.find(MATRIX_END)) else {
        anyhow::bail!("{KERNELS_PAGE} has no kernel-matrix markers");
    };
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let body = format!("{MATRIX_BEGIN}\n\nFrom the run of {date} (`target/vm-test/matrix.md`):\n\n{}\n", table.trim_end());
    let out = format!("{}{body}{}", &text[..b], &text[e..]);
    std::fs::write(&path, out)?;
    Ok(())
}
