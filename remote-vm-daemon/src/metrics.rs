//! A small writer for the Prometheus text exposition format (0.0.4).
//!
//! Our families are built fresh from the BPF maps on every scrape; this module only
//! knows how to write them. Integers stay integers (no float rounding of counters).
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

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

#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
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

    pub fn encode(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        for s in &self.samples {
            out.push_str(self.name);
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

    #[test]
    fn encodes_exactly() {
        let mut f = Family::new("remote_vm_x_total", Kind::Counter, "An \\ example\nhelp.");
        f.push(&[("probe", "a\"b\\c\nd")], 18_446_744_073_709_551_615u64);
        f.push(&[], 0.25);
        let mut g = Family::new("remote_vm_y", Kind::Gauge, "Y.");
        g.push(&[("a", "1"), ("b", "2")], f64::INFINITY);
        assert_eq!(
            encode_all(&[f, g]),
            "# HELP remote_vm_x_total An \\\\ example\\nhelp.\n\
             # TYPE remote_vm_x_total counter\n\
             remote_vm_x_total{probe=\"a\\\"b\\\\c\\nd\"} 18446744073709551615\n\
             remote_vm_x_total 0.25\n\
             # HELP remote_vm_y Y.\n\
             # TYPE remote_vm_y gauge\n\
             remote_vm_y{a=\"1\",b=\"2\"} +Inf\n"
        );
    }
}
