//! A small writer for the Prometheus text exposition format (0.0.4).
//!
//! Our families are built fresh from the BPF maps on every scrape; this module only
//! knows how to write them. Integers stay integers (no float rounding of counters).
//!
//! Why not the `prometheus` crate: its model holds every value as `f64` (a
//! counter past 2^53 would be rounded) and it writes `le` bounds in its own
//! float format, which would rename every bucket series fleets already store
//! (`golden/exposition.txt` pins ours, e.g. `le="1.024e-6"`). So there is exactly
//! one writer, this one, for our families and the process metrics alike.
use std::fmt::Write as _;

use remote_vm_common::catalog::Metric;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

#[derive(Clone, Debug)]
pub struct Sample {
    /// `""`, or `_bucket`, `_sum`, `_count` for histograms.
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// One metric family of the catalog and its samples.
#[derive(Clone, Debug)]
pub struct Family {
    pub metric: &'static Metric,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(metric: &'static Metric) -> Family {
        Family {
            metric,
            samples: Vec::new(),
        }
    }

    /// Adds one sample; `labels` are `(name, value)` pairs.
    pub fn push<V: Into<Value>>(&mut self, labels: &[(&'static str, &str)], value: V) -> &mut Self {
        self.samples.push(Sample {
            suffix: "",
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
            value: value.into(),
        });
        self
    }

    /// Adds one histogram from log2 buckets (`buckets[i]`: values in
    /// `(2^(i-1), 2^i]`): cumulative `le` bounds `2^i / divisor` for `i` in
    /// `min..=max`, then `+Inf`, `_sum / divisor` and `_count`. Values below the
    /// range are in every bucket, values above only in `+Inf`: nothing is dropped.
    pub fn push_log2(
        &mut self,
        labels: &[(&'static str, &str)],
        h: &remote_vm_common::stats::Histogram,
        min: u32,
        max: u32,
        divisor: f64,
    ) -> &mut Self {
        let base: Vec<(&'static str, String)> = labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
        let count: u64 = h.buckets.iter().sum();
        let mut cumulative: u64 = h.buckets.iter().take(min as usize).sum();
        for i in min..=max {
            cumulative += h.buckets.get(i as usize).copied().unwrap_or(0);
            let le = (1u64 << i) as f64 / divisor;
            let mut l = base.clone();
            l.push(("le", format!("{le:?}")));
            self.samples.push(Sample { suffix: "_bucket", labels: l, value: Value::Int(cumulative) });
        }
        let mut l = base.clone();
        l.push(("le", "+Inf".to_string()));
        self.samples.push(Sample { suffix: "_bucket", labels: l, value: Value::Int(count) });
        let sum = if divisor == 1.0 { Value::Int(h.sum) } else { Value::Float(h.sum as f64 / divisor) };
        self.samples.push(Sample { suffix: "_sum", labels: base.clone(), value: sum });
        self.samples.push(Sample { suffix: "_count", labels: base, value: Value::Int(count) });
        self
    }

    pub fn encode(&self, out: &mut String) {
        let m = self.metric;
        let _ = writeln!(out, "# HELP {} {}", m.name, escape_help(m.help));
        let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind.as_str());
        for s in &self.samples {
            out.push_str(m.name);
            out.push_str(s.suffix);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            out.push(' ');
            write_value(out, s.value);
            out.push('\n');
        }
    }
}

pub fn encode_all(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        f.encode(&mut out);
    }
    out
}

fn write_value(out: &mut String, v: Value) {
    match v {
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f == f64::INFINITY => out.push_str("+Inf"),
        Value::Float(f) if f == f64::NEG_INFINITY => out.push_str("-Inf"),
        Value::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use remote_vm_common::{
        catalog::{Buckets, Kind, Unit},
        stats::{BUCKETS, Histogram},
    };

    const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
        Metric { name, help, kind, unit: Unit::Count, labels: &[], buckets: Buckets::None, coverage: &[] }
    }
    static T: Metric = m("t_seconds", Kind::Histogram, "T.");
    static X: Metric = m("x_total", Kind::Counter, "An \\ example\nhelp.");
    static Y: Metric = m("y", Kind::Gauge, "Y.");

    #[test]
    fn log2_histograms_are_cumulative_and_round_up_at_seams() {
        let mut h = Histogram { buckets: [0; BUCKETS], sum: 0 };
        // 1 ns and 1024 ns (both on seams), 1025 ns, 5 s (above the range).
        for v in [1, 1024, 1025, 5_000_000_000] {
            h.observe(v);
        }
        let mut f = Family::new(&T);
        f.push_log2(&[("path", "fast")], &h, 10, 11, 1e9);
        let mut out = String::new();
        f.encode(&mut out);
        assert_eq!(
            out,
            "# HELP t_seconds T.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{path=\"fast\",le=\"1.024e-6\"} 2\n\
             t_seconds_bucket{path=\"fast\",le=\"2.048e-6\"} 3\n\
             t_seconds_bucket{path=\"fast\",le=\"+Inf\"} 4\n\
             t_seconds_sum{path=\"fast\"} 5.00000205\n\
             t_seconds_count{path=\"fast\"} 4\n"
        );
    }

    #[test]
    fn encodes_exactly() {
        let mut f = Family::new(&X);
        f.push(&[("probe", "a\"b\\c\nd")], 18_446_744_073_709_551_615u64);
        f.push(&[], 0.25);
        let mut g = Family::new(&Y);
        g.push(&[("a", "1"), ("b", "2")], f64::INFINITY);
        assert_eq!(
            encode_all(&[f, g]),
            "# HELP x_total An \\\\ example\\nhelp.\n\
             # TYPE x_total counter\n\
             x_total{probe=\"a\\\"b\\\\c\\nd\"} 18446744073709551615\n\
             x_total 0.25\n\
             # HELP y Y.\n\
             # TYPE y gauge\n\
             y{a=\"1\",b=\"2\"} +Inf\n"
        );
    }
}
