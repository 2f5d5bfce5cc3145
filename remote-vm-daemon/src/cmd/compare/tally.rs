//! Where each counter step goes: to the kernel group its host ran when the
//! step's sample was scraped. Pure: both modes feed it samples, the tests
//! feed it by hand.
use std::collections::{BTreeMap, BTreeSet};

use super::Group;

/// A scrape target: (job, instance).
pub type Host = (String, String);
/// A kernel group: (patched, series, release). Hosts on v1 and on v2 of the
/// same release are two groups: their fallbacks mean different things.
pub type Kernel = (String, String, String);

/// A step whose host had no `kernel_info` sample at or before it goes here.
pub fn unknown() -> Kernel {
    ("unknown".into(), "unknown".into(), "unknown".into())
}

/// Each host's kernel over time, from its `kernel_info` samples.
#[derive(Debug, Default)]
pub struct Kernels {
    /// Per host: (time in ms, kernel), sorted by time.
    by_host: BTreeMap<Host, Vec<(i64, Kernel)>>,
}

impl Kernels {
    pub fn add(&mut self, host: &Host, kernel: &Kernel, times_ms: impl IntoIterator<Item = i64>) {
        let v = self.by_host.entry(host.clone()).or_default();
        v.extend(times_ms.into_iter().map(|t| (t, kernel.clone())));
    }

    /// Call once every sample is added.
    pub fn sort(&mut self) {
        for v in self.by_host.values_mut() {
            v.sort();
        }
    }

    /// The kernel of the latest `kernel_info` sample at or before `t_ms`
    /// (`before`: the host's kernel known from earlier, if any).
    pub fn at(&self, host: &Host, t_ms: i64, before: Option<&Kernel>) -> Kernel {
        let Some(v) = self.by_host.get(host) else {
            return before.cloned().unwrap_or_else(unknown);
        };
        let i = v.partition_point(|(t, _)| *t <= t_ms);
        match i {
            0 => before.cloned().unwrap_or_else(unknown),
            i => v[i - 1].1.clone(),
        }
    }

    #[cfg(test)]
    pub fn hosts(&self) -> impl Iterator<Item = (&Host, impl Iterator<Item = &Kernel>)> {
        self.by_host.iter().map(|(h, v)| (h, v.iter().map(|(_, k)| k)))
    }
}

/// The groups as they fill.
#[derive(Debug, Default)]
pub struct Tally {
    groups: BTreeMap<Kernel, Group>,
    hosts: BTreeMap<Kernel, BTreeSet<Host>>,
}

impl Tally {
    fn group(&mut self, k: &Kernel) -> &mut Group {
        self.groups.entry(k.clone()).or_insert_with(|| Group {
            patched: k.0.clone(),
            series: k.1.clone(),
            release: k.2.clone(),
            ..Default::default()
        })
    }

    /// `host` ran `kernel` at some sample of the range.
    pub fn host_in(&mut self, kernel: &Kernel, host: &Host) {
        self.group(kernel);
        self.hosts.entry(kernel.clone()).or_default().insert(host.clone());
    }

    /// One counter step: `amount` more of `name` in `kernel`'s group
    /// (`reset`: the counter had dropped, `amount` is its new value).
    pub fn step(&mut self, kernel: &Kernel, name: &str, amount: f64, reset: bool) {
        let g = self.group(kernel);
        *g.counts.entry(name.to_string()).or_default() += amount;
        if reset {
            g.resets += 1;
        }
    }

    /// The steps of one series: from `prev` (its last value before these
    /// samples, if any) through `samples` ((time ms, value), in time order),
    /// each to the kernel its host ran at the step's sample. Returns the last
    /// value.
    pub fn samples(&mut self, kernels: &Kernels, host: &Host, name: &str, prev: Option<f64>, before: Option<&Kernel>, samples: &[(i64, f64)]) -> Option<f64> {
        let mut last = prev;
        for &(t, v) in samples {
            let kernel = kernels.at(host, t, before);
            match last {
                Some(p) if v < p => self.step(&kernel, name, v, true),
                Some(p) => self.step(&kernel, name, v - p, false),
                // The first sample: the base the next steps count from.
                None => self.step(&kernel, name, 0.0, false),
            }
            last = Some(v);
        }
        last
    }

    pub fn finish(mut self) -> Vec<Group> {
        for (k, hosts) in &self.hosts {
            if let Some(g) = self.groups.get_mut(k) {
                g.hosts = hosts.len();
            }
        }
        self.groups.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: &str) -> Host {
        ("j".into(), i.into())
    }

    fn k(p: &str) -> Kernel {
        let series = if p == "yes" { "v1" } else { "none" };
        (p.into(), series.into(), "7.3.4".into())
    }

    #[test]
    fn a_host_that_changed_kernel_counts_in_both_groups_for_its_own_times() {
        let mut kernels = Kernels::default();
        // Unpatched until 3 s, patched from 4 s (a reboot: the counter resets).
        kernels.add(&h("a"), &k("no"), [1000, 2000, 3000]);
        kernels.add(&h("a"), &k("yes"), [4000, 5000]);
        kernels.sort();
        let mut t = Tally::default();
        for (host, ks) in kernels.hosts() {
            let ks: Vec<Kernel> = ks.cloned().collect();
            for kk in ks {
                t.host_in(&kk, host);
            }
        }
        let last = t.samples(&kernels, &h("a"), "reads", None, None, &[(1000, 10.0), (2000, 15.0), (3000, 20.0), (4000, 3.0), (5000, 7.0)]);
        assert_eq!(last, Some(7.0));
        let groups = t.finish();
        let no = groups.iter().find(|g| g.patched == "no").unwrap();
        let yes = groups.iter().find(|g| g.patched == "yes").unwrap();
        assert_eq!((no.count("reads"), no.resets, no.hosts), (10.0, 0, 1));
        assert_eq!((yes.count("reads"), yes.resets, yes.hosts), (7.0, 1, 1));
    }

    #[test]
    fn v1_and_v2_of_one_release_are_two_groups() {
        let mut kernels = Kernels::default();
        let v = |s: &str| -> Kernel { ("yes".into(), s.into(), "7.3.4".into()) };
        kernels.add(&h("a"), &v("v1"), [1000, 2000]);
        kernels.add(&h("b"), &v("v2"), [1000, 2000]);
        kernels.sort();
        let mut t = Tally::default();
        t.samples(&kernels, &h("a"), "reads", None, None, &[(1000, 10.0), (2000, 15.0)]);
        t.samples(&kernels, &h("b"), "reads", None, None, &[(1000, 1.0), (2000, 3.0)]);
        let groups = t.finish();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups.iter().find(|g| g.series == "v1").unwrap().count("reads"), 5.0);
        assert_eq!(groups.iter().find(|g| g.series == "v2").unwrap().count("reads"), 2.0);
    }

    #[test]
    fn steps_before_any_kernel_sample_go_to_the_known_kernel_or_unknown() {
        let mut kernels = Kernels::default();
        kernels.add(&h("a"), &k("yes"), [3000]);
        kernels.sort();
        assert_eq!(kernels.at(&h("a"), 2999, None), unknown());
        assert_eq!(kernels.at(&h("a"), 2999, Some(&k("no"))), k("no"));
        assert_eq!(kernels.at(&h("a"), 3000, None), k("yes"));
        assert_eq!(kernels.at(&h("b"), 5000, None), unknown());
        let mut t = Tally::default();
        t.samples(&kernels, &h("a"), "reads", Some(1.0), None, &[(2000, 4.0), (3000, 6.0)]);
        let groups = t.finish();
        assert_eq!(groups.iter().find(|g| g.patched == "unknown").unwrap().count("reads"), 3.0);
        assert_eq!(groups.iter().find(|g| g.patched == "yes").unwrap().count("reads"), 2.0);
    }
}
