//! The public API pinned: every series the daemon can export, checked against
//! `golden/exposition.txt` (names, types, label names and values, `le` strings).
use std::collections::BTreeMap;

use remote_vm_common::{
    Family as Probe,
    catalog::{self, Values},
};

use super::*;
use crate::{
    bpf::{Patched, Verdict, waits::WaitsNow},
    kernel::{Layout, facts_for_tests},
};

/// A kernel with every BTF item and the lockless path.
pub fn full_layout() -> Layout {
    Layout {
        mm_mmap_lock: Ok(112),
        task_mm: Ok(2000),
        fw_page: Ok(0),
        fw_level: Ok(24),
        fw_levels: Ok((1, 2)),
        vma_vm_ops: Ok(144),
        vma_vm_end: Ok(8),
        foll_write: 1,
        foll_write_note: None,
        foll_anon: Ok(1 << 14),
        stall_ids: crate::kernel::layout::StallIds::unknown(),
        mmap_lock_tp_args: Ok((1, 2)),
        has_lock_vma_under_rcu: true,
        has_folio_walk_start: true,
        has_rcu_table_free: true,
        unwinder: Ok(crate::kernel::layout::Unwinder::Orc),
        from_btf: true,
        functions_known: true,
        assumptions: Vec::new(),
    }
}

/// Every family attached in `modes` (by family), the rest in their first mode
/// (an opt-in-only family in its first opt-in mode).
pub fn attached_in(modes: &[(Probe, &str)]) -> Attached {
    let verdicts = Probe::ALL
        .iter()
        .map(|f| {
            let first = f.first_mode().or_else(|| f.spec().opt_in.first()).unwrap();
            let mode = modes.iter().find(|(g, _)| g == f).map_or(first, |(_, m)| f.mode(m).unwrap());
            Verdict {
                family: *f,
                mode: Some(mode),
                failures: Vec::new(),
            }
        })
        .collect();
    Attached {
        verdicts,
        patched: Patched::Yes,
        patched_why: String::new(),
        series: remote_vm_common::series::Series::V1,
        series_why: String::new(),
        kprobe_links: BTreeMap::new(),
        waits: Ok(()),
    }
}

/// The configuration that exports every series: the read+write remote mode,
/// host-wide contention tracepoints.
pub fn everything() -> Attached {
    attached_in(&[(Probe::MmapLockRemote, "fentry_rw")])
}

/// `# TYPE` lines and sample names with their labels, values dropped; the
/// values of free labels (release, version) shown as `*`.
pub fn series(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# TYPE ") {
            out.push(line.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let name = series.split('{').next().unwrap_or(series);
        let Some(family) = catalog::family_of_sample(name) else { continue };
        let mut s = series.to_string();
        for l in family.labels.iter().filter(|l| l.values == Values::Free) {
            if let Some(start) = s.find(&format!("{}=\"", l.name)) {
                let v0 = start + l.name.len() + 2;
                if let Some(len) = s[v0..].find('"') {
                    s.replace_range(v0..v0 + len, "*");
                }
            }
        }
        out.push(s);
    }
    out
}

/// Every family `attached` covers on a kernel with everything, from zeroed maps
/// and no wait in progress, with the default histogram range.
fn collect_with(attached: &Attached) -> Vec<Family> {
    let snap = Snapshot {
        waits: Some(WaitsNow::default()),
        runs: Some([(0, 0); Point::ALL.len()]),
        ..Snapshot::ZERO
    };
    collect_snap(attached, &snap)
}

fn collect_snap(attached: &Attached, snap: &Snapshot) -> Vec<Family> {
    let facts = facts_for_tests();
    let view = View {
        facts: &facts,
        attached,
        sight: Sight::of(&full_layout(), attached),
        hist_min_log2: 9,
        hist_max_log2: 34,
    };
    collect(&view, snap)
}

/// A run the kernel skips is counted once: by the kernel where it keeps a count
/// (trampolines, kprobe links), else by its partner program (an exit without
/// its entry, an entry finding the last call open).
#[test]
fn a_skipped_run_is_counted_once() {
    use remote_vm_common::stats::Counter;
    let mut snap = Snapshot::ZERO;
    snap.stats.counters[Counter::MissedEntries as usize] = 5;
    snap.stats.counters[Counter::MissedExits as usize] = 2;
    snap.kernel_misses[Point::AccessRemoteVmEntry.index() as usize] = 5;
    snap.kernel_misses[Point::AccessRemoteVmExit.index() as usize] = 2;
    let entry = format!("{}{{probe=\"{}\"}}", catalog::PROBE_MISSES.name, Point::AccessRemoteVmEntry.name());
    let exit = format!("{}{{probe=\"{}\"}}", catalog::PROBE_MISSES.name, Point::AccessRemoteVmExit.name());
    let value = |attached: &Attached, snap: &Snapshot, series: &str| {
        let text = encode_all(&collect_snap(attached, snap));
        text.lines().find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_string())).unwrap_or_default()
    };
    // Trampolines: the kernel's count alone.
    let fentry = attached_in(&[]);
    assert_eq!((value(&fentry, &snap, &entry).as_str(), value(&fentry, &snap, &exit).as_str()), ("5", "2"));
    // Kprobes with link counters (6.7+): the kernel's count alone.
    let mut kprobe = attached_in(&[(Probe::AccessRemoteVm, "kprobe")]);
    kprobe.kprobe_links = [(Point::AccessRemoteVmEntry, 1), (Point::AccessRemoteVmExit, 1)].into_iter().collect();
    assert_eq!((value(&kprobe, &snap, &entry).as_str(), value(&kprobe, &snap, &exit).as_str()), ("5", "2"));
    // Kprobes without (before 6.7): the kernel reports nothing; what the programs saw counts.
    snap.kernel_misses = [0; Point::ALL.len()];
    kprobe.kprobe_links.clear();
    assert_eq!((value(&kprobe, &snap, &entry).as_str(), value(&kprobe, &snap, &exit).as_str()), ("5", "2"));
}

#[test]
fn waits_in_progress_are_gauges_read_at_the_scrape() {
    let now = WaitsNow {
        count: 2,
        oldest_ns: 1_500_000_000,
        listed: Vec::new(),
    };
    let text = encode_all(&collect_snap(&everything(), &Snapshot { waits: Some(now), ..Snapshot::ZERO }));
    assert!(text.contains(&format!("\n{} 2\n", catalog::MMAP_LOCK_WAITERS.name)), "{text}");
    assert!(text.contains(&format!("\n{} 1.5\n", catalog::MMAP_LOCK_OLDEST_WAIT.name)), "{text}");
    // The iterator failed this time: both absent, not 0.
    let text = encode_all(&collect_snap(&everything(), &Snapshot::ZERO));
    assert!(!text.contains(catalog::MMAP_LOCK_WAITERS.name) && !text.contains(catalog::MMAP_LOCK_OLDEST_WAIT.name));
    // Not attached (e.g. outside the host PID namespace): absent too.
    let mut attached = everything();
    attached.waits = Err("not in the host PID namespace".into());
    let snap = Snapshot { waits: Some(WaitsNow::default()), ..Snapshot::ZERO };
    let text = encode_all(&collect_snap(&attached, &snap));
    assert!(!text.contains(catalog::MMAP_LOCK_WAITERS.name));
}

fn render_with(attached: &Attached) -> String {
    encode_all(&collect_with(attached))
}

const GOLDEN: &str = include_str!("../../golden/exposition.txt");

/// `everything()` less the opt-in families with no default mode (the default).
fn everything_by_default() -> Attached {
    let mut a = everything();
    for v in a.verdicts.iter_mut().filter(|v| v.family.opt_in_only()) {
        v.mode = None;
    }
    a
}

/// The series of both: those of `a`, and each of `b`'s not among them after
/// the one before it in `b`.
fn union(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    let mut out = a;
    for (i, s) in b.iter().enumerate() {
        if out.contains(s) {
            continue;
        }
        let at = i.checked_sub(1).and_then(|p| out.iter().position(|o| *o == b[p])).map_or(0, |p| p + 1);
        out.insert(at, s.clone());
    }
    out
}

#[test]
fn every_series_is_the_golden_one() {
    // With every family attached, and by default: the VMA-level fallback
    // reasons are split in the one and merged in the other.
    let got = union(series(&render_with(&everything())), series(&render_with(&everything_by_default())));
    if std::env::var_os("REMOTE_VM_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/exposition.txt");
        std::fs::write(path, got.join("\n") + "\n").unwrap();
    }
    let want: Vec<&str> = GOLDEN.lines().collect();
    assert_eq!(got, want);
}

#[test]
fn every_family_has_a_filler_and_only_declared_labels() {
    let families = collect_with(&everything());
    assert_eq!(families.len(), catalog::ALL.len());
    for f in &families {
        assert!(!f.samples.is_empty(), "{} has no filler", f.metric.name);
        for s in &f.samples {
            let names: Vec<&str> = s.labels.iter().map(|(k, _)| *k).filter(|k| *k != "le").collect();
            let declared: Vec<&str> = f.metric.labels.iter().map(|l| l.name).collect();
            assert_eq!(names, declared, "{}", f.metric.name);
            for ((_, v), l) in s.labels.iter().filter(|(k, _)| *k != "le").zip(f.metric.labels) {
                assert!(l.values.contains(v), "{} {}={v}", f.metric.name, l.name);
            }
        }
    }
}

#[test]
fn every_mode_exports_a_subset_of_the_golden_series() {
    let golden: Vec<&str> = GOLDEN.lines().collect();
    for family in Probe::ALL {
        for mode in family.modes() {
            let got = series(&render_with(&attached_in(&[(family, mode.name)])));
            for s in &got {
                // probe_attached names the mode: the probe must be known.
                let probe_part = |s: &str| s.split(",mode=").next().unwrap_or_default().to_string();
                let known = golden.contains(&s.as_str())
                    || (s.starts_with(catalog::PROBE_ATTACHED.name)
                        && golden.iter().any(|g| probe_part(g) == probe_part(s)));
                assert!(known, "{} {}: {s}", family.name(), mode.name);
            }
        }
    }
}
