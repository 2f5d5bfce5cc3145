//! The golden file of every series the daemon can export
//! (`remote-vm-daemon/golden/exposition.txt`, pinned by the daemon's unit test),
//! for checking what a running daemon exports against it.
use remote_vm_common::catalog::{self, Values};

use crate::prom::Scrape;

const GOLDEN: &str = include_str!("../../remote-vm-daemon/golden/exposition.txt");

/// The golden series (sample lines without values; `# TYPE` lines left out).
pub fn series() -> Vec<String> {
    GOLDEN.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect()
}

/// A scrape's series of our families in the golden form: labels in the
/// daemon's order, free label values (release, version) as `*`.
pub fn scrape_series(scrape: &Scrape) -> Vec<String> {
    scrape
        .samples
        .keys()
        .filter(|k| k.starts_with(catalog::PREFIX))
        .map(|k| normalise(k))
        .collect()
}

/// Whether `series` is golden. Status labels — the probe's `mode`, an `_info`
/// family's facts — may take any value of their declared closed set.
pub fn known(golden: &[String], series: &str) -> bool {
    let Some(shape) = shape(series) else { return false };
    golden.iter().any(|g| shape_of_golden(g) == shape)
}

fn shape_of_golden(line: &str) -> String {
    shape(line).unwrap_or_default()
}

/// Whether two series are the same up to their status labels' values.
pub fn same_shape(a: &str, b: &str) -> bool {
    matches!((shape(a), shape(b)), (Some(x), Some(y)) if x == y)
}

/// The series with its status labels' values checked and replaced by `*`;
/// `None` if one is outside its declared set.
fn shape(series: &str) -> Option<String> {
    let (name, rest) = series.split_once('{').unwrap_or((series, ""));
    let family = family_of(name)?;
    let status = |l: &catalog::Label| l.values == Values::Mode || family.unit == catalog::Unit::Info;
    let mut out = Vec::new();
    for part in rest.trim_end_matches('}').split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once("=\"")?;
        let v = v.trim_end_matches('"');
        match family.labels.iter().find(|l| l.name == k) {
            Some(l) if status(l) => {
                if v != "*" && !l.values.contains(v) {
                    return None;
                }
                out.push(format!("{k}=*"));
            }
            _ => out.push(format!("{k}={v}")),
        }
    }
    Some(format!("{name}{{{}}}", out.join(",")))
}

/// The catalog family a sample name belongs to (histograms: `_bucket`, `_sum`, `_count`).
fn family_of(name: &str) -> Option<&'static catalog::Metric> {
    catalog::ALL.iter().copied().find(|m| {
        name == m.name || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s) == Some(m.name))
    })
}

/// `Scrape` sorts labels by name; the golden file has them in the catalog's
/// order with `le` last.
fn normalise(key: &str) -> String {
    let (name, rest) = key.split_once('{').unwrap_or((key, ""));
    let Some(family) = family_of(name) else { return key.to_string() };
    let labels: Vec<(&str, &str)> = rest
        .trim_end_matches('}')
        .split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once("=\""))
        .map(|(k, v)| (k, v.trim_end_matches('"')))
        .collect();
    let mut ordered: Vec<String> = Vec::new();
    for l in family.labels {
        if let Some((_, v)) = labels.iter().find(|(k, _)| *k == l.name) {
            let v = if l.values == Values::Free { "*" } else { v };
            ordered.push(format!("{}=\"{v}\"", l.name));
        }
    }
    if let Some((_, v)) = labels.iter().find(|(k, _)| *k == "le") {
        ordered.push(format!("le=\"{v}\""));
    }
    // Labels the catalog does not declare are kept, so they show as unknown.
    for (k, v) in &labels {
        if *k != "le" && !family.labels.iter().any(|l| l.name == *k) {
            ordered.push(format!("{k}=\"{v}\""));
        }
    }
    if ordered.is_empty() { name.to_string() } else { format!("{name}{{{}}}", ordered.join(",")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_in_golden_form_is_golden() {
        // The golden file's own lines, as the exposition writes them, parse back.
        let text: String = GOLDEN
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{} 0\n", l.replace("=\"*\"", "=\"6.1.0\"")))
            .collect();
        let scrape = Scrape::parse(&text).unwrap();
        let golden = series();
        let mut got = scrape_series(&scrape);
        got.sort();
        let mut want = golden.clone();
        want.sort();
        assert_eq!(got, want);
        assert!(got.iter().all(|s| known(&golden, s)));
        // Status labels may differ, nothing else.
        let info = |p: &str| format!("{}{{release=\"*\",per_vma_lock=\"yes\",rcu_table_free=\"yes\",patched=\"{p}\"}}", catalog::KERNEL_INFO.name);
        assert!(same_shape(&info("yes"), &info("no")));
        assert!(!same_shape(&info("yes"), &info("maybe")));
        assert!(!same_shape(&got[0], &got[1]));
        assert!(!known(&golden, &format!("{}{{path=\"warp\"}}", catalog::READS.name)));
    }
}
