//! The Prometheus text exposition format, as the daemon's `/metrics` serves it.
use std::collections::BTreeMap;

use crate::{Client, Error, Result};

fn bad(msg: String) -> Error {
    Error::Exposition(msg)
}

/// Samples of one scrape, keyed by `name{label="value",…}` with labels sorted.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Scrape> {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad(format!("sample without value: {line:?}")))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|e| bad(format!("bad value in {line:?}: {e}")))?,
            };
            samples.insert(normalise(series)?, value);
        }
        Ok(Scrape { samples })
    }

    /// `GET /metrics` of `target` (`HOST:PORT` or a base URL), parsed.
    pub fn fetch(target: &str) -> Result<Scrape> {
        Scrape::fetch_with(&Client::new(target)?)
    }

    /// `GET /metrics` through `client`, parsed.
    pub fn fetch_with(client: &Client) -> Result<Scrape> {
        let (status, body) = client.get("/metrics")?;
        if status != 200 {
            return Err(Error::Status {
                url: client.url("/metrics"),
                status,
                body: crate::snippet(&body),
            });
        }
        Scrape::parse(&body)
    }

    /// The value of `name` with exactly `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&key(name, labels)).copied()
    }

    /// The sum of the series of `name` that have at least `labels` (PromQL's
    /// `sum(name{labels})`), if any does.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let mut found = None;
        for (k, v) in self.series(name) {
            let inner = k.strip_prefix(name).unwrap_or("").trim_start_matches('{').trim_end_matches('}');
            let have: Vec<&str> = if inner.is_empty() { Vec::new() } else { inner.split(',').collect() };
            if wanted.iter().all(|w| have.contains(&w.as_str())) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Every series of `name` (any labels).
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a String, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(k, v)| (k, *v))
    }
}

pub fn key(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let mut l: Vec<_> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

fn normalise(series: &str) -> Result<String> {
    let Some((name, rest)) = series.split_once('{') else {
        return Ok(series.to_string());
    };
    let body = rest.strip_suffix('}').ok_or_else(|| bad(format!("unterminated labels in {series}")))?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let k: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return Err(bad(format!("label {k} without quoted value in {series}")));
        }
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    v.push('\\');
                    v.extend(chars.next());
                }
                '"' => break,
                c => v.push(c),
            }
        }
        labels.push(format!("{}=\"{v}\"", k.trim()));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels.sort();
    Ok(format!("{name}{{{}}}", labels.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_series_with_at_least_the_labels() {
        let s = Scrape::parse(
            "s{lock_mode=\"read\",op=\"mmap\"} 2\ns{op=\"munlock\",lock_mode=\"read\"} 3\ns{lock_mode=\"write\",op=\"mmap\"} 5\nt 1\n",
        )
        .unwrap();
        assert_eq!(s.sum("s", &[("lock_mode", "read")]), Some(5.0));
        assert_eq!(s.sum("s", &[("op", "mmap")]), Some(7.0));
        assert_eq!(s.sum("s", &[]), Some(10.0));
        assert_eq!(s.sum("s", &[("lock_mode", "none")]), None);
        assert_eq!(s.sum("t", &[]), Some(1.0));
        assert_eq!(s.sum("u", &[]), None);
    }

    #[test]
    fn parses_and_normalises() {
        let s = Scrape::parse(
            "# HELP x y\nx_total{b=\"2\",a=\"1\"} 3\nx_total 4\nh_bucket{le=\"+Inf\"} 5\ng 1.5e3\n",
        )
        .unwrap();
        assert_eq!(s.value("x_total", &[("a", "1"), ("b", "2")]), Some(3.0));
        assert_eq!(s.value("x_total", &[]), Some(4.0));
        assert_eq!(s.value("h_bucket", &[("le", "+Inf")]), Some(5.0));
        assert_eq!(s.value("g", &[]), Some(1500.0));
        assert_eq!(s.series("x_total").count(), 2);
    }
}
