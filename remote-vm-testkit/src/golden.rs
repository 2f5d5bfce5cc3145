//! The golden file of every series the daemon can export
//! (`remote-vm-daemon/golden/exposition.txt`, pinned by the daemon's unit test),
//! for checking what a running daemon exports against it.
use std::collections::HashSet;

use remote_vm_common::catalog::{self, Values};

use crate::prom::Scrape;

const GOLDEN: &str = include_str!("../../remote-vm-daemon/golden/exposition.txt");

/// The golden series (sample lines without values; `# TYPE` lines left out)
/// and their shapes, computed once.
pub struct Golden {
    pub lines: Vec<String>,
    shapes: HashSet<String>,
}

impl Golden {
    pub fn load() -> Golden {
        let lines: Vec<String> = GOLDEN.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect();
        let shapes = lines.iter().filter_map(|l| shape(l)).collect();
        Golden { lines, shapes }
    }

    /// Whether `series` is golden. Status labels — the probe's `mode`, an
    /// `_info` family's facts — may take any value of their declared closed set.
    pub fn knows(&self, series: &str) -> bool {
        shape(series).is_some_and(|s| self.shapes.contains(&s))
    }

    /// The golden series none of `got` has the shape of.
    pub fn missing_from<'a>(&'a self, got: &[String]) -> impl Iterator<Item = &'a String> + 'a {
        let have: HashSet<String> = got.iter().filter_map(|s| shape(s)).collect();
        self.lines.iter().filter(move |g| shape(g).is_none_or(|s| !have.contains(&s)))
    }
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

/// `name{k="v",…}` as the name and its label pairs.
fn split_series(series: &str) -> (&str, Vec<(&str, &str)>) {
    let (name, rest) = series.split_once('{').unwrap_or((series, ""));
    let labels = rest
        .trim_end_matches('}')
        .split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once("=\""))
        .map(|(k, v)| (k, v.trim_end_matches('"')))
        .collect();
    (name, labels)
}

/// The series with its status labels' values checked and replaced by `*`;
/// `None` if one is outside its declared set or the family is not ours.
fn shape(series: &str) -> Option<String> {
    let (name, labels) = split_series(series);
    let family = catalog::family_of_sample(name)?;
    let status = |l: &catalog::Label| l.values == Values::Mode || family.unit == catalog::Unit::Info;
    let mut out = Vec::new();
    for (k, v) in labels {
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

/// `Scrape` sorts labels by name; the golden file has them in the catalog's
/// order with `le` last.
fn normalise(key: &str) -> String {
    let (name, labels) = split_series(key);
    let Some(family) = catalog::family_of_sample(name) else { return key.to_string() };
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
        let golden = Golden::load();
        let mut got = scrape_series(&scrape);
        got.sort();
        let mut want = golden.lines.clone();
        want.sort();
        assert_eq!(got, want);
        assert!(got.iter().all(|s| golden.knows(s)));
        assert_eq!(golden.missing_from(&got).count(), 0);
        // Every golden series has a shape of its own: one series covers one.
        assert_eq!(golden.missing_from(&got[..1]).count(), golden.lines.len() - 1);
        // Status labels may differ within their closed set, nothing else.
        let info = |p: &str, s: &str| {
            format!("{}{{release=\"*\",per_vma_lock=\"yes\",rcu_table_free=\"yes\",patched=\"{p}\",series=\"{s}\"}}", catalog::KERNEL_INFO.name)
        };
        assert!(golden.knows(&info("yes", "v1")) && golden.knows(&info("no", "none")) && golden.knows(&info("yes", "v2")));
        assert!(!golden.knows(&info("maybe", "v1")));
        assert!(!golden.knows(&info("yes", "v3")));
        assert!(!golden.knows(&format!("{}{{path=\"warp\"}}", catalog::READS.name)));
    }
}
