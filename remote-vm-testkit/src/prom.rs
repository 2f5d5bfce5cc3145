//! A minimal HTTP GET and Prometheus text parser, enough for tests to read the
//! daemon's numbers exactly.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// `GET path` on `addr`; returns (status, body).
pub fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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
            let (series, value) = line.rsplit_once(' ').context("sample without value")?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().with_context(|| format!("bad value in {line:?}"))?,
            };
            samples.insert(normalise(series)?, value);
        }
        Ok(Scrape { samples })
    }

    pub fn fetch(addr: &str) -> Result<Scrape> {
        let (status, body) = get(addr, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Scrape::parse(&body)
    }

    /// The value of `name` with exactly `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&key(name, labels)).copied()
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
    let body = rest.strip_suffix('}').context("unterminated labels")?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let k: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            bail!("label {k} without quoted value in {series}");
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
