//! The metric catalog (`remote-vm-common/src/catalog.rs`) is the one place a
//! metric is named: no other Rust source spells a `remote_vm_` metric name, the
//! metrics table of docs/operating.md is generated from it, and the dashboards and rules use only
//! names it declares.
use std::path::{Path, PathBuf};

use remote_vm_common::catalog;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "node_modules" && !name.to_string_lossy().starts_with('.') {
                files(&path, ext, out);
            }
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Crates whose paths (`remote_vm_common::…`) are not metric names.
const CRATES: &[&str] = &["common", "testkit", "ebpf", "daemon", "prom"];

/// Every `remote_vm_…` word in `text` that is not a crate path.
fn prefixed_words(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = text[i..].find(catalog::PREFIX) {
        let start = i + at;
        let mut end = start + catalog::PREFIX.len();
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        let rest = &text[start + catalog::PREFIX.len()..end];
        // After `:` it is part of a recording rule's name (`level:metric:op`).
        let boundary = start == 0 || !(word(bytes[start - 1]) || bytes[start - 1] == b':');
        if boundary && !rest.is_empty() && !CRATES.contains(&rest) {
            out.push(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn no_rust_source_but_the_catalog_spells_a_metric_name() {
    let mut sources = Vec::new();
    files(&root(), "rs", &mut sources);
    assert!(sources.len() > 20, "found only {} sources", sources.len());
    let mut found = Vec::new();
    for path in sources {
        if path.ends_with("remote-vm-common/src/catalog.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for w in prefixed_words(line) {
                found.push(format!("{}:{}: {w}", path.strip_prefix(root()).unwrap().display(), n + 1));
            }
        }
    }
    assert_eq!(found, Vec::<String>::new(), "metric names typed outside the catalog");
}

/// The section of the docs page `page` (relative to the workspace root) between
/// `<!-- NAME table: generated from the SOURCE -->` and `<!-- end of NAME table -->`
/// is `want`; with `REMOTE_VM_BLESS` set, a drifted section is rewritten instead.
fn docs_table_is(page: &str, name: &str, source: &str, want: &str) {
    let path = root().join(page);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
    let begin = format!("<!-- {name} table: generated from the {source} -->\n");
    let end = format!("<!-- end of {name} table -->");
    let start = text.find(&begin).unwrap_or_else(|| panic!("{page} has no {name} table markers")) + begin.len();
    let stop = text[start..].find(&end).expect("end marker") + start;
    if text[start..stop] != *want && std::env::var_os("REMOTE_VM_BLESS").is_some() {
        let fixed = format!("{}{want}{}", &text[..start], &text[stop..]);
        std::fs::write(&path, fixed).unwrap();
        return;
    }
    assert_eq!(text[start..stop], *want, "{page} drifted from the {source} (REMOTE_VM_BLESS=1 rewrites it)");
}

#[test]
fn the_docs_tables_are_generated() {
    docs_table_is("docs/operating.md", "metrics", "catalog", &catalog::readme_table());
    docs_table_is("docs/probes-and-kernels.md", "probes", "registry", &remote_vm_common::registry::readme_table());
}

#[test]
fn dashboards_and_rules_use_only_declared_names() {
    let mut docs = Vec::new();
    for ext in ["json", "yml"] {
        files(&root().join("dashboards"), ext, &mut docs);
    }
    assert!(docs.len() >= 4, "{docs:?}");
    let mut unknown = Vec::new();
    let mut used = 0;
    for path in docs {
        let text = std::fs::read_to_string(&path).unwrap();
        for w in prefixed_words(&text) {
            used += 1;
            if catalog::family_of_sample(&w).is_none() {
                unknown.push(format!("{}: {w}", path.display()));
            }
        }
    }
    assert!(used > 10);
    assert_eq!(unknown, Vec::<String>::new());
}

#[test]
fn words_are_found_at_boundaries_only() {
    let text = format!("rate({}reads_total[5m]) access_{}entry {}common::x", catalog::PREFIX, catalog::PREFIX, catalog::PREFIX);
    assert_eq!(prefixed_words(&text), vec![catalog::READS.name.to_string()]);
}
