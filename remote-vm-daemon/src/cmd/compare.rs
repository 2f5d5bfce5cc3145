//! `remote-vm-daemon compare`: the fleet's A/B table, asked of an existing
//! Prometheus (the fleet's aggregation engine; nothing is collected here).
//!
//! Counts are exact: for every series the raw samples of the range are fetched
//! and the counter's increase is summed from them, counter resets (daemon
//! restarts) included — not `increase()`, which extrapolates to the range's ends.
//! So the table equals what the daemons exported between the first and last
//! sample Prometheus has in the range.
use remote_vm_common::catalog as cat;
use std::{collections::BTreeMap, time::Duration};

use remote_vm_prom::{Client, Options};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("--prometheus {url}: {reason} (expected http[s]://[USER:PASSWORD@]HOST[:PORT][/PATH])")]
    Url { url: String, reason: String },
    #[error("--range {0}: expected a duration such as 30m, 1h, 7d")]
    Range(String),
    #[error("--range {0}: longer than 3650d (10 years), the longest taken")]
    RangeTooLong(String),
    /// Prometheus answered more than [`MAX_BODY`] bytes.
    #[error("{0} (shorten --range or narrow --selector)")]
    TooLarge(remote_vm_prom::Error),
    /// More series or samples than [`Limits`] allow.
    #[error("{what}: more than {limit} {unit} (shorten --range or narrow --selector)")]
    TooMany { what: String, limit: usize, unit: &'static str },
    /// An answer that is not what Prometheus sends for a counter.
    #[error("the answer to {what}: {reason}")]
    BadAnswer { what: String, reason: String },
    /// Unreachable, timed out, an HTTP error, a failed query: each names the URL.
    #[error(transparent)]
    Prometheus(remote_vm_prom::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Markdown,
}

pub struct Prometheus {
    api: remote_vm_prom::Prometheus,
}

impl Prometheus {
    /// `http[s]://[USER:PASSWORD@]HOST[:PORT][/PATH]`; https checks the server
    /// against the system's CA certificates.
    pub fn parse(url: &str) -> Result<Prometheus, CompareError> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(CompareError::Url {
                url: url.into(),
                reason: "only http:// and https:// URLs are taken".into(),
            });
        }
        let options = Options {
            connect_timeout: Duration::from_secs(10),
            // A little over Prometheus' own default query timeout (2 min), so
            // that a slow query fails with Prometheus' word for it.
            timeout: Duration::from_secs(150),
            // Raw samples of every series over the range: can be large, and
            // the parsed answer takes several times its size.
            max_body: MAX_BODY,
            auth: None,
        };
        // Its errors show the URL without a password.
        let client = Client::with_options(url, options).map_err(|e| match e {
            remote_vm_prom::Error::Url { url, reason } => CompareError::Url { url, reason },
            e => CompareError::Prometheus(e),
        })?;
        Ok(Prometheus {
            api: remote_vm_prom::Prometheus::new(client),
        })
    }

    /// An instant query at `time` (Unix seconds).
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<Value>, CompareError> {
        self.api.query(expr, Some(time)).map_err(prometheus_error)
    }
}

fn prometheus_error(e: remote_vm_prom::Error) -> CompareError {
    match e {
        e @ remote_vm_prom::Error::TooLarge { .. } => CompareError::TooLarge(e),
        e => CompareError::Prometheus(e),
    }
}

/// The largest answer taken from Prometheus: 256 MiB of JSON, about 10 million
/// raw samples (one counter over 7 days, some 60 hosts scraped every 15 s). The
/// parsed answer takes several times that in memory.
pub const MAX_BODY: u64 = 256 << 20;

/// The longest `--range`: 10 years (Prometheus keeps 15 days by default).
pub const MAX_RANGE_S: u64 = 3650 * 86400;

/// `30s`, `15m`, `1h`, `7d` in seconds: at least 1 s, at most [`MAX_RANGE_S`].
pub fn parse_range(s: &str) -> Result<u64, CompareError> {
    let bad = || CompareError::Range(s.into());
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let mult: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    // Only digits: a number too large for u64 is a range too long.
    let n: u64 = num.parse().unwrap_or(u64::MAX);
    match n.checked_mul(mult) {
        Some(0) => Err(bad()),
        Some(secs) if secs <= MAX_RANGE_S => Ok(secs),
        _ => Err(CompareError::RangeTooLong(s.into())),
    }
}

/// How much of Prometheus' answers `compare` takes, besides [`MAX_BODY`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Series in one answer: a fleet of 100,000 hosts has 300,000 `reads` series.
    pub series: usize,
    /// Raw samples in all answers together: Prometheus' own default limit for
    /// one query (`--query.max-samples`).
    pub samples: usize,
}

pub const LIMITS: Limits = Limits {
    series: 1_000_000,
    samples: 50_000_000,
};

/// The exact increase of a counter from its raw samples: positive steps summed,
/// and after a reset (a drop) the new value counted from zero.
pub fn exact_increase(values: &[f64]) -> f64 {
    values
        .windows(2)
        .map(|w| if w[1] >= w[0] { w[1] - w[0] } else { w[1] })
        .sum()
}

/// One (patched, release) group.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Group {
    pub patched: String,
    pub release: String,
    pub hosts: usize,
    /// Counter increases over the range, by metric key (e.g. `reads{path="fast"}`).
    pub counts: BTreeMap<String, f64>,
    /// Counter resets seen (daemon restarts); the counts include what came after.
    pub resets: u64,
}

impl Group {
    pub fn count(&self, key: &str) -> f64 {
        self.counts.get(key).copied().unwrap_or(0.0)
    }

    pub fn fast_path_ratio(&self) -> Option<f64> {
        let all: f64 = ["fast", "fallback", "slow"].iter().map(|p| self.count(&format!("reads{{path=\"{p}\"}}"))).sum();
        (all > 0.0).then(|| self.count("reads{path=\"fast\"}") / all)
    }
}

/// The counters the table shows: (key, metric, label to split by).
const COUNTERS: &[(&str, &str, Option<&str>)] = &[
    ("reads", cat::READS.name, Some("path")),
    ("fallbacks", cat::FALLBACKS.name, Some("reason")),
    ("writes", cat::WRITES.name, None),
    ("read_bytes", cat::READ_BYTES.name, Some("path")),
    ("lockless_bytes_discarded", cat::LOCKLESS_BYTES_DISCARDED.name, None),
    ("foll_anon_file_backed", cat::FOLL_ANON_FILE_BACKED.name, None),
    ("multi_vma_reads", cat::MULTI_VMA_READS.name, Some("path")),
];

pub fn compare(prom: &Prometheus, range_s: u64, selector: &str, now: f64) -> Result<Vec<Group>, CompareError> {
    compare_answers(|expr, time| prom.query(expr, time), range_s, selector, now, LIMITS)
}

/// A query's answer as [`Prometheus::query`] returns it, from the status and
/// body of the HTTP answer (what `fuzz/` drives [`compare_answers`] with).
pub fn query_answer(expr: &str, status: u16, body: &str) -> Result<Vec<Value>, CompareError> {
    remote_vm_prom::query_result("http://prometheus/api/v1/query", expr, status, body).map_err(prometheus_error)
}

/// At most this much of an answer is quoted in an error.
const QUOTED: usize = 200;

fn quoted(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(QUOTED) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// The values of one series of a range query: each sample `[time, "value"]`
/// with a value a counter can have (finite, not negative). Anything else is an
/// error: a sample left out would silently change the count.
fn counter_values(expr: &str, series: &Value) -> Result<Vec<f64>, CompareError> {
    let bad = |reason: String| CompareError::BadAnswer {
        what: expr.to_string(),
        reason,
    };
    let samples = series["values"]
        .as_array()
        .ok_or_else(|| bad(format!("a series without \"values\": {}", quoted(series))))?;
    samples
        .iter()
        .map(|s| match s[1].as_str().and_then(|x| x.parse::<f64>().ok()) {
            Some(v) if s[0].is_number() && v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(bad(format!("sample {} of {} is not [time, \"counter value\"]", quoted(s), quoted(&series["metric"])))),
        })
        .collect()
}

/// The table from the answers `query(expr, time)` gives, within `limits`.
pub fn compare_answers(
    mut query: impl FnMut(&str, f64) -> Result<Vec<Value>, CompareError>,
    range_s: u64,
    selector: &str,
    now: f64,
    limits: Limits,
) -> Result<Vec<Group>, CompareError> {
    let sel = selector.trim().trim_start_matches('{').trim_end_matches('}');
    let with = |extra: &str| {
        let parts: Vec<&str> = [sel, extra].into_iter().filter(|s| !s.is_empty()).collect();
        format!("{{{}}}", parts.join(","))
    };
    let series_within = |expr: &str, answer: Vec<Value>| {
        if answer.len() > limits.series {
            return Err(CompareError::TooMany {
                what: expr.to_string(),
                limit: limits.series,
                unit: "series",
            });
        }
        Ok(answer)
    };
    let mut samples = 0usize;
    // Which group each host is in (at the end of the range).
    let expr = format!("{}{}", cat::KERNEL_INFO.name, with(""));
    let info = series_within(&expr, query(&expr, now)?)?;
    let mut host_group: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for s in &info {
        let m = &s["metric"];
        let key = (m["patched"].as_str().unwrap_or("unknown").to_string(), m["release"].as_str().unwrap_or("unknown").to_string());
        let host = (m["job"].as_str().unwrap_or("").to_string(), m["instance"].as_str().unwrap_or("").to_string());
        host_group.insert(host, key.clone());
        let g = groups.entry(key.clone()).or_insert_with(|| Group {
            patched: key.0.clone(),
            release: key.1.clone(),
            ..Default::default()
        });
        g.hosts += 1;
    }
    for (key, metric, split) in COUNTERS {
        let expr = format!("{metric}{}[{range_s}s]", with(""));
        for series in series_within(&expr, query(&expr, now)?)? {
            samples += series["values"].as_array().map_or(0, Vec::len);
            if samples > limits.samples {
                return Err(CompareError::TooMany {
                    what: "the answers".to_string(),
                    limit: limits.samples,
                    unit: "samples",
                });
            }
            let m = &series["metric"];
            let host = (m["job"].as_str().unwrap_or("").to_string(), m["instance"].as_str().unwrap_or("").to_string());
            let values = counter_values(&expr, &series)?;
            let Some(gk) = host_group.get(&host) else { continue };
            let resets = values.windows(2).filter(|w| w[1] < w[0]).count() as u64;
            let name = match split {
                Some(label) => format!("{key}{{{label}=\"{}\"}}", m[*label].as_str().unwrap_or("")),
                None => key.to_string(),
            };
            if let Some(g) = groups.get_mut(gk) {
                *g.counts.entry(name).or_default() += exact_increase(&values);
                g.resets += resets;
            }
        }
    }
    Ok(groups.into_values().collect())
}

pub fn render(groups: &[Group], format: Format, range: &str) -> String {
    let cell = |g: &Group, k: &str| format!("{}", g.count(k));
    let columns: Vec<(&str, Box<dyn Fn(&Group) -> String>)> = vec![
        ("patched", Box::new(|g: &Group| g.patched.clone())),
        ("release", Box::new(|g: &Group| g.release.clone())),
        ("hosts", Box::new(|g: &Group| g.hosts.to_string())),
        ("reads fast", Box::new(move |g: &Group| cell(g, "reads{path=\"fast\"}"))),
        ("fallback", Box::new(move |g: &Group| cell(g, "reads{path=\"fallback\"}"))),
        ("slow", Box::new(move |g: &Group| cell(g, "reads{path=\"slow\"}"))),
        ("fast-path ratio", Box::new(|g: &Group| g.fast_path_ratio().map_or("–".into(), |r| format!("{:.1}%", r * 100.0)))),
        ("vma_lock_failed", Box::new(move |g: &Group| cell(g, "fallbacks{reason=\"vma_lock_failed\"}"))),
        ("vma_unsuitable", Box::new(move |g: &Group| cell(g, "fallbacks{reason=\"vma_unsuitable\"}"))),
        ("page_not_present", Box::new(move |g: &Group| cell(g, "fallbacks{reason=\"page_not_present\"}"))),
        ("other", Box::new(move |g: &Group| cell(g, "fallbacks{reason=\"other\"}"))),
        ("writes", Box::new(move |g: &Group| cell(g, "writes"))),
        ("counter resets", Box::new(|g: &Group| g.resets.to_string())),
    ];
    match format {
        Format::Json => serde_json::to_string_pretty(&serde_json::json!({ "range": range, "groups": groups })).unwrap_or_default() + "\n",
        Format::Markdown => {
            let mut out = format!("Remote reads by kernel group over the last {range} (exact counter increases)\n\n");
            out.push_str(&format!("| {} |\n", columns.iter().map(|(h, _)| *h).collect::<Vec<_>>().join(" | ")));
            out.push_str(&format!("|{}\n", "---|".repeat(columns.len())));
            for g in groups {
                out.push_str(&format!("| {} |\n", columns.iter().map(|(_, f)| f(g)).collect::<Vec<_>>().join(" | ")));
            }
            out
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = std::iter::once(columns.iter().map(|(h, _)| h.to_string()).collect())
                .chain(groups.iter().map(|g| columns.iter().map(|(_, f)| f(g)).collect()))
                .collect();
            let widths: Vec<usize> = (0..columns.len())
                .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            let mut out = String::new();
            for r in rows {
                let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                out.push_str(line.join("  ").trim_end());
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increases_are_exact_across_resets() {
        assert_eq!(exact_increase(&[5.0, 7.0, 7.0, 10.0]), 5.0);
        // A restart: 10 -> 2 means the new daemon counted 2.
        assert_eq!(exact_increase(&[5.0, 10.0, 2.0, 6.0]), 5.0 + 2.0 + 4.0);
        assert_eq!(exact_increase(&[3.0]), 0.0);
        assert_eq!(exact_increase(&[]), 0.0);
    }

    #[test]
    fn parses_urls_and_ranges() {
        let p = Prometheus::parse("http://prom.example:9090/prefix/").unwrap();
        assert_eq!(p.api.client().base(), "http://prom.example:9090/prefix");
        let p = Prometheus::parse("https://[::1]:9090").unwrap();
        assert_eq!(p.api.client().base(), "https://[::1]:9090");
        assert!(Prometheus::parse("ftp://x:1").is_err());
        assert!(Prometheus::parse("prom.example:9090").is_err());
        assert!(Prometheus::parse("http://:9").is_err());
        assert!(Prometheus::parse("http://x:port").is_err());
        assert_eq!(parse_range("90s").unwrap(), 90);
        assert_eq!(parse_range("1h").unwrap(), 3600);
        assert_eq!(parse_range("7d").unwrap(), 604800);
        assert!(parse_range("1y").is_err());
        assert!(parse_range("h").is_err());
        assert!(parse_range("0m").is_err());
    }

    #[test]
    fn ranges_are_bounded() {
        let err = |s: &str| parse_range(s).unwrap_err().to_string();
        let malformed = |s: &str| format!("--range {s}: expected a duration such as 30m, 1h, 7d");
        for s in ["0s", "-1h", "1.5h", "", "h", "1", "1H", " 1h", "1h ", "+1h"] {
            assert_eq!(err(s), malformed(s), "{s:?}");
        }
        // Used to wrap (release) or panic (debug): 999999999999999999 × 86400.
        assert_eq!(
            err("999999999999999999d"),
            "--range 999999999999999999d: longer than 3650d (10 years), the longest taken"
        );
        assert_eq!(
            err("99999999999999999999999s"),
            "--range 99999999999999999999999s: longer than 3650d (10 years), the longest taken"
        );
        assert_eq!(err("3651d"), "--range 3651d: longer than 3650d (10 years), the longest taken");
        assert_eq!(parse_range("3650d").unwrap(), MAX_RANGE_S);
        assert_eq!(parse_range("87600h").unwrap(), MAX_RANGE_S);
        assert_eq!(parse_range("1s").unwrap(), 1);
    }

    /// A Prometheus answering every query with `hosts` hosts, each with
    /// `samples` samples per counter series.
    fn fake_prometheus(hosts: usize, samples: usize) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let info = request.contains(cat::KERNEL_INFO.name);
                let result: Vec<Value> = (0..hosts)
                    .map(|h| {
                        let metric = serde_json::json!({"job": "remote-vm", "instance": format!("h{h}"),
                            "patched": "yes", "release": "7.3.4", "path": "fast"});
                        if info {
                            serde_json::json!({"metric": metric, "value": [1.0, "1"]})
                        } else {
                            let values: Vec<Value> =
                                (0..samples).map(|i| serde_json::json!([i, i.to_string()])).collect();
                            serde_json::json!({"metric": metric, "values": values})
                        }
                    })
                    .collect();
                let data = serde_json::json!({"resultType": "matrix", "result": result});
                let body = serde_json::json!({"status": "success", "data": data}).to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn answers_are_bounded() {
        let prom = Prometheus::parse(&fake_prometheus(3, 5)).unwrap();
        // 7 counters × 3 series × 5 samples: 105, all taken.
        let compare_within = |prom: &Prometheus, range_s, selector, now, limits| {
            compare_answers(|expr, time| prom.query(expr, time), range_s, selector, now, limits)
        };
        let groups = compare_within(&prom, 3600, "", 0.0, Limits { series: 3, samples: 105 }).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].hosts, 3);
        assert_eq!(groups[0].count("reads{path=\"fast\"}"), 12.0);
        assert_eq!(
            compare_within(&prom, 3600, "", 0.0, Limits { series: 2, samples: 100 }).unwrap_err().to_string(),
            format!("{}{{}}: more than 2 series (shorten --range or narrow --selector)", cat::KERNEL_INFO.name)
        );
        // The fifth counter's answer passes 60.
        assert_eq!(
            compare_within(&prom, 3600, "", 0.0, Limits { series: 3, samples: 60 }).unwrap_err().to_string(),
            "the answers: more than 60 samples (shorten --range or narrow --selector)"
        );
    }

    /// Answers given as bodies: the kernel_info query first, then every counter.
    fn from_bodies(info: &str, counter: &str) -> Result<Vec<Group>, CompareError> {
        compare_answers(
            |expr, _| query_answer(expr, 200, if expr.starts_with(cat::KERNEL_INFO.name) { info } else { counter }),
            3600,
            "",
            0.0,
            LIMITS,
        )
    }

    #[test]
    fn samples_that_are_not_counter_values_are_refused() {
        let info = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"job":"j","instance":"h","patched":"yes","release":"7.3.4"},"value":[1,"1"]}]}}"#;
        let counter = |values: &str| {
            format!(
                r#"{{"status":"success","data":{{"resultType":"matrix","result":[
                {{"metric":{{"job":"j","instance":"h","path":"fast"}},"values":{values}}}]}}}}"#
            )
        };
        let groups = from_bodies(info, &counter(r#"[[1,"2"],[2,"5"],[3,"1"]]"#)).unwrap();
        assert_eq!(groups[0].count("reads{path=\"fast\"}"), 3.0 + 1.0);
        assert_eq!(groups[0].resets, 7, "one per counter: every counter got the same answer");
        let refused = |values: &str| from_bodies(info, &counter(values)).unwrap_err().to_string();
        let reads = format!("{}{{}}[3600s]", cat::READS.name);
        for (values, sample) in [
            (r#"[[1,"2"],[2,"NaN"]]"#, r#"[2,"NaN"]"#),
            (r#"[[1,"-1"]]"#, r#"[1,"-1"]"#),
            (r#"[[1,"+Inf"]]"#, r#"[1,"+Inf"]"#),
            (r#"[[1,2]]"#, "[1,2]"),
            (r#"[["1","2"]]"#, r#"["1","2"]"#),
            (r#"[[1]]"#, "[1]"),
        ] {
            assert_eq!(
                refused(values),
                format!(
                    r#"the answer to {reads}: sample {sample} of {{"instance":"h","job":"j","path":"fast"}} is not [time, "counter value"]"#
                ),
                "{values}"
            );
        }
        assert_eq!(
            from_bodies(info, r#"{"status":"success","data":{"result":[{"metric":{}}]}}"#).unwrap_err().to_string(),
            format!(r#"the answer to {reads}: a series without "values": {{"metric":{{}}}}"#)
        );
        // Quoted in part only.
        let long = refused(&format!(r#"[[1,"{}"]]"#, "9".repeat(10_000)));
        assert!(long.len() < 600, "{}", long.len());
    }
}
