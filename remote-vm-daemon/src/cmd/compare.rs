//! `remote-vm-daemon compare`: the fleet's A/B table, asked of an existing
//! Prometheus (the fleet's aggregation engine; nothing is collected here).
//!
//! Counts are exact: the counter's steps between consecutive samples of the
//! range are summed, a reset (daemon restart) counting the new value — not
//! `increase()`, which extrapolates to the range's ends. Each step goes to the
//! kernel group its host ran when the step's sample was scraped (`tally`), so a
//! host rebooted into another kernel counts in both groups for its own times,
//! and a host that left counts for the time it was there.
//!
//! Two ways to ask, with the same answer (`--mode`):
//! - `raw`: every raw sample of the range, in one query per counter. The
//!   engine loads them all at once: past some fleet size and range it refuses
//!   (Prometheus' `query.max-samples`).
//! - `chunked`: the range in chunks; per chunk and series the engine answers
//!   the last and the lowest value and the resets (`last_over_time`,
//!   `min_over_time`, `resets`), which give the exact increase where the chunk
//!   has no reset (the lowest value is then the first); raw samples are
//!   fetched only for the chunks of a series with a reset or whose host ran
//!   two kernels in it.
//!
//! `auto` takes `raw` when the expected sample count is small.
use remote_vm_common::{catalog as cat, holder::HolderOp};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use remote_vm_prom::{AnswerLimits, Client, Options, Series};

mod tally;

use tally::{Host, Kernel, Kernels, Tally};

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
    /// A credentials, CA or client certificate file that cannot be used.
    #[error(transparent)]
    File(#[from] super::client::FileError),
    #[error("--chunk {0}: expected a duration such as 1h or 1d, at least 1m")]
    Chunk(String),
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

/// How `compare` asks the engine (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `raw` when at most [`AUTO_RAW_MAX_SAMPLES`] samples are expected, else `chunked`.
    Auto,
    /// Every raw sample of the range.
    Raw,
    /// The engine summarises time chunks; raw samples only where needed.
    Chunked,
}

/// `auto` takes `raw` up to this many expected raw samples.
pub const AUTO_RAW_MAX_SAMPLES: f64 = cat::COMPARE_AUTO_RAW_MAX_SAMPLES;
/// `chunked` sizes its chunks for about this many samples per query.
pub const CHUNK_SAMPLES: f64 = 4_000_000.0;
/// Hosts per query for the raw samples of chunks that need them (the query
/// names them in a regular expression: keeps URLs short).
const RAW_BATCH: usize = 50;

/// How to reach the engine (`--prometheus`; the CA, credentials and client
/// certificate from files).
#[derive(Debug, Default, Clone)]
pub struct Connection {
    pub url: String,
    pub client: super::client::ClientFlags,
}

impl Connection {
    /// The client, credentials and CA read from their files.
    pub fn open(&self) -> Result<Prometheus, CompareError> {
        let options = self.client.options(Prometheus::options())?;
        Prometheus::with(&self.url, options)
    }
}

pub struct Prometheus {
    api: remote_vm_prom::Prometheus,
}

impl Prometheus {
    /// `http[s]://[USER:PASSWORD@]HOST[:PORT][/PATH]`; https checks the server
    /// against the system's CA certificates.
    pub fn parse(url: &str) -> Result<Prometheus, CompareError> {
        Prometheus::with(url, Prometheus::options())
    }

    /// What `compare` asks of its client, before credentials.
    fn options() -> Options {
        Options {
            connect_timeout: Duration::from_secs(10),
            // A little over Prometheus' own default query timeout (2 min), so
            // that a slow query fails with Prometheus' word for it.
            timeout: Duration::from_secs(150),
            // Raw samples of every series over the range: can be large, and
            // the parsed answer takes several times its size.
            max_body: MAX_BODY,
            ..Options::default()
        }
    }

    fn with(url: &str, options: Options) -> Result<Prometheus, CompareError> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(CompareError::Url {
                url: remote_vm_prom::without_credentials(url),
                reason: "only http:// and https:// URLs are taken".into(),
            });
        }
        // Its errors show the URL without a password.
        let client = Client::with_options(url, options).map_err(|e| match e {
            remote_vm_prom::Error::Url { url, reason } => CompareError::Url { url, reason },
            e => CompareError::Prometheus(e),
        })?;
        Ok(Prometheus {
            api: remote_vm_prom::Prometheus::new(client),
        })
    }

    /// An instant query at `time` (Unix seconds), read as it streams and
    /// within `limits`.
    pub fn query(&self, expr: &str, time: f64, limits: AnswerLimits) -> Result<Vec<Series>, CompareError> {
        self.api.query_counters(expr, Some(time), limits).map_err(prometheus_error)
    }
}

fn prometheus_error(e: remote_vm_prom::Error) -> CompareError {
    match e {
        e @ remote_vm_prom::Error::TooLarge { .. } => CompareError::TooLarge(e),
        remote_vm_prom::Error::TooMany { query, limit, unit, .. } => CompareError::TooMany { what: query, limit, unit },
        e => CompareError::Prometheus(e),
    }
}

/// The largest answer taken from Prometheus: 256 MiB of JSON, about 10 million
/// raw samples (one counter over 7 days, some 60 hosts scraped every 15 s). It
/// is parsed as it is read, within `AnswerLimits::DEFAULT` (never held whole).
pub const MAX_BODY: u64 = 256 << 20;

/// `--end now` is this long ago: samples of the last scrapes may still be
/// written, and VictoriaMetrics moves queries within 30 s of now back 30 s
/// (`-search.latencyOffset`), which would make chunks overlap.
pub const NOW_LAG_S: f64 = 60.0;

/// `--end`: Unix seconds (or `now`, less [`NOW_LAG_S`]).
pub fn parse_end(s: &str, now: f64) -> Result<f64, String> {
    if s == "now" {
        return Ok(now - NOW_LAG_S);
    }
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 && t < 1e11 => Ok(t),
        _ => Err(format!("--end {s}: expected Unix seconds (e.g. 1795000000) or now")),
    }
}

/// `--chunk`: as `--range`, at least a minute.
pub fn parse_chunk(s: &str) -> Result<u64, CompareError> {
    match parse_range(s) {
        Ok(c) if c >= 60 => Ok(c),
        _ => Err(CompareError::Chunk(s.into())),
    }
}

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

/// One (patched, series, release) group.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Group {
    pub patched: String,
    /// `remote_vm_kernel_info`'s `series` (`unknown` from daemons without it).
    pub series: String,
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

    /// Stalls of holder op `op` (`None`: every op) per host-hour over a
    /// range of `range_s` seconds.
    pub fn stalls_per_host_hour(&self, op: Option<&str>, range_s: u64) -> Option<f64> {
        let host_hours = self.hosts as f64 * range_s as f64 / 3600.0;
        let stalls = match op {
            Some(op) => self.count(&format!("stalls{{op=\"{op}\"}}")),
            None => self.counts.iter().filter(|(k, _)| k.starts_with("stalls{")).map(|(_, v)| v).sum(),
        };
        (host_hours > 0.0).then(|| stalls / host_hours)
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
    ("stalls", cat::STALLS.name, Some("op")),
];

/// What to compare: the range ending at `end` (Unix seconds), the series
/// `selector` picks, how to ask.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub range_s: u64,
    pub selector: &'a str,
    pub end: f64,
    pub mode: Mode,
    /// `chunked`'s chunk (default: sized from the expected sample count).
    pub chunk_s: Option<u64>,
}

/// The table and how it was made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub groups: Vec<Group>,
    /// The range's end, Unix seconds.
    pub end: f64,
    /// The range's length.
    pub range_seconds: u64,
    /// `raw` or `chunked` (what `auto` chose).
    pub mode: Mode,
    /// The chunk, in `chunked` mode.
    pub chunk_seconds: Option<u64>,
    /// Queries made.
    pub queries: usize,
    /// `chunked`: (series, chunk) pairs fetched as raw samples.
    pub raw_chunks: usize,
}

pub fn compare(prom: &Prometheus, req: &Request) -> Result<Comparison, CompareError> {
    compare_answers(|expr, time, limits| prom.query(expr, time, limits), req, LIMITS)
}

/// A query's answer as [`Prometheus::query`] returns it, from the status and
/// body of the HTTP answer (what `fuzz/` drives [`compare_answers`] with).
pub fn query_answer(expr: &str, status: u16, body: &[u8], limits: AnswerLimits) -> Result<Vec<Series>, CompareError> {
    remote_vm_prom::counters::read_answer("http://prometheus/api/v1/query", expr, status, body, limits).map_err(prometheus_error)
}

fn bad(expr: &str, reason: String) -> CompareError {
    CompareError::BadAnswer { what: expr.to_string(), reason }
}

/// The samples of one series of a range query: each `[time, "value"]` with a
/// value a counter can have (staleness markers, which VictoriaMetrics returns,
/// are no samples). Anything else is an error: a sample left out would
/// silently change the count.
fn counter_samples(expr: &str, series: &Series) -> Result<Vec<(i64, f64)>, CompareError> {
    if let Some(sample) = &series.bad {
        return Err(bad(expr, format!("sample {sample} of {} is not [time, \"counter value\"]", series.metric_json())));
    }
    let samples = series.values.as_ref().ok_or_else(|| no_values(expr, series))?;
    Ok(samples.iter().filter(|s| !s.is_stale()).map(|s| (s.time_ms, s.value)).collect())
}

fn no_values(expr: &str, series: &Series) -> CompareError {
    bad(expr, format!("a series without \"values\": {{\"metric\":{}}}", series.metric_json()))
}

/// The value of one series of an instant query (`value: [time, "v"]`);
/// `None` for NaN (a summary of staleness markers: the samples are asked for).
fn instant_value(expr: &str, series: &Series) -> Result<Option<f64>, CompareError> {
    match (&series.bad, series.value) {
        (None, Some(v)) => Ok((!v.is_stale()).then_some(v.value)),
        (bad_one, _) => Err(bad(
            expr,
            format!("value {} of {} is not [time, \"counter value\"]", bad_one.as_deref().unwrap_or("null"), series.metric_json()),
        )),
    }
}

fn label<'m>(m: &'m BTreeMap<String, String>, name: &str) -> Option<&'m str> {
    m.get(name).map(String::as_str)
}

fn host_of(m: &BTreeMap<String, String>) -> Host {
    (label(m, "job").unwrap_or("").to_string(), label(m, "instance").unwrap_or("").to_string())
}

fn kernel_of(m: &BTreeMap<String, String>) -> Kernel {
    let value = |name: &str| label(m, name).unwrap_or("unknown").to_string();
    (value("patched"), value("series"), value("release"))
}

/// A series' identity across queries: its labels but the name (which
/// `*_over_time` drops), in a fixed order.
fn series_id(metric: &str, m: &BTreeMap<String, String>) -> String {
    let labels: BTreeMap<&String, &String> = m.iter().filter(|(k, _)| *k != "__name__").collect();
    format!("{metric}{}", serde_json::to_string(&labels).unwrap_or_default())
}

/// The table's key of a series: e.g. `reads{path="fast"}`.
fn count_name(key: &str, split: Option<&str>, m: &BTreeMap<String, String>) -> String {
    match split {
        Some(l) => format!("{key}{{{l}=\"{}\"}}", label(m, l).unwrap_or("")),
        None => key.to_string(),
    }
}

/// A PromQL string literal matching exactly one of `values` as a regular
/// expression (RE2: metacharacters escaped).
fn regex_of(values: &BTreeSet<&str>) -> String {
    let alternatives: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .map(|c| if "\\.+*?()|[]{}^$".contains(c) { format!("\\{c}") } else { c.to_string() })
                .collect::<String>()
        })
        .collect();
    let re = alternatives.join("|");
    format!("\"{}\"", re.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The table from the answers `query(expr, time)` gives, within `limits`.
pub fn compare_answers(
    mut query: impl FnMut(&str, f64, AnswerLimits) -> Result<Vec<Series>, CompareError>,
    req: &Request,
    limits: Limits,
) -> Result<Comparison, CompareError> {
    let sel = req.selector.trim().trim_start_matches('{').trim_end_matches('}');
    let mut asker = Asker {
        query: &mut query,
        limits,
        queries: 0,
        samples: 0,
        sel: sel.to_string(),
    };
    let (mode, chunk_s) = match (req.mode, req.chunk_s) {
        (Mode::Raw, _) => (Mode::Raw, None),
        (Mode::Chunked, Some(c)) => (Mode::Chunked, Some(c.clamp(60, req.range_s.max(60)))),
        (m, given) => {
            let estimate = asker.estimate(req)?;
            match (m, given) {
                (Mode::Auto, None) if estimate <= AUTO_RAW_MAX_SAMPLES => (Mode::Raw, None),
                (_, Some(c)) => (Mode::Chunked, Some(c.clamp(60, req.range_s.max(60)))),
                _ => {
                    let chunk = (req.range_s as f64 * (CHUNK_SAMPLES / estimate.max(1.0)).min(1.0)) as u64;
                    (Mode::Chunked, Some((chunk / 60 * 60).clamp(60, req.range_s.max(60))))
                }
            }
        }
    };
    let mut raw_chunks = 0;
    let (tally, mode, chunk_s) = match chunk_s {
        None => match asker.raw(req) {
            Ok(t) => (t, mode, None),
            // auto's estimate looks at the range's last hour: a fleet larger
            // before it can pass a limit (ours or the engine's). Chunks then.
            Err(e) if req.mode == Mode::Auto && too_much(&e) => {
                let chunk = (req.range_s / 8 / 60 * 60).clamp(60, req.range_s.max(60));
                asker.samples = 0;
                (asker.chunked(req, chunk, &mut raw_chunks)?, Mode::Chunked, Some(chunk))
            }
            Err(e) => return Err(e),
        },
        Some(c) => (asker.chunked(req, c, &mut raw_chunks)?, mode, Some(c)),
    };
    Ok(Comparison {
        groups: tally.finish(),
        end: req.end,
        range_seconds: req.range_s,
        mode,
        chunk_seconds: chunk_s,
        queries: asker.queries,
        raw_chunks,
    })
}

/// An error that fewer samples a query would avoid: our limits, or the
/// engine's (Prometheus: 422 "…too many samples…"; VictoriaMetrics: 422
/// "…-search.maxSamplesPerQuery…").
fn too_much(e: &CompareError) -> bool {
    match e {
        CompareError::TooMany { .. } | CompareError::TooLarge(_) => true,
        CompareError::Prometheus(p) => {
            let s = p.to_string();
            s.contains("too many samples") || s.contains("maxSamplesPerQuery") || s.contains("maxPointsPerTimeseries")
        }
        _ => false,
    }
}

/// The queries of one comparison, counted and bounded.
struct Asker<'q, Q: FnMut(&str, f64, AnswerLimits) -> Result<Vec<Series>, CompareError>> {
    query: &'q mut Q,
    limits: Limits,
    queries: usize,
    samples: usize,
    /// The selector's matchers, without braces.
    sel: String,
}

impl<Q: FnMut(&str, f64, AnswerLimits) -> Result<Vec<Series>, CompareError>> Asker<'_, Q> {
    /// `{selector,extra}`.
    fn with(&self, extra: &str) -> String {
        let parts: Vec<&str> = [self.sel.as_str(), extra].into_iter().filter(|s| !s.is_empty()).collect();
        format!("{{{}}}", parts.join(","))
    }

    /// One query, its answer read within the series limit and the samples
    /// left of the comparison's budget (so a large answer stops where it
    /// passes them, never read whole first).
    fn ask(&mut self, expr: &str, time: f64) -> Result<Vec<Series>, CompareError> {
        self.queries += 1;
        let left = self.limits.samples.saturating_sub(self.samples);
        let limits = AnswerLimits {
            series: self.limits.series.min(AnswerLimits::DEFAULT.series),
            samples: left.min(AnswerLimits::DEFAULT.samples),
            ..AnswerLimits::DEFAULT
        };
        match (self.query)(expr, time, limits) {
            // Past what the comparison has left: named as the total.
            Err(CompareError::TooMany { unit: "samples", limit, .. }) if limit == left => Err(CompareError::TooMany {
                what: "the answers".to_string(),
                limit: self.limits.samples,
                unit: "samples",
            }),
            r => r,
        }
    }

    /// Counts raw samples against the limit.
    fn took(&mut self, n: usize) -> Result<(), CompareError> {
        self.samples += n;
        if self.samples > self.limits.samples {
            return Err(CompareError::TooMany {
                what: "the answers".to_string(),
                limit: self.limits.samples,
                unit: "samples",
            });
        }
        Ok(())
    }

    /// The sample times of one `kernel_info` series of a range query (counted
    /// against the limit).
    fn sample_times(&mut self, expr: &str, s: &Series) -> Result<Vec<i64>, CompareError> {
        let samples = s.values.as_ref().ok_or_else(|| no_values(expr, s))?;
        self.took(samples.len())?;
        if let Some(sample) = &s.bad {
            return Err(bad(expr, format!("sample {sample} is not [time, value]")));
        }
        Ok(samples.iter().filter(|v| !v.is_stale()).map(|v| v.time_ms).collect())
    }

    /// Raw samples the range holds, expected: counter series now × the
    /// busiest host's samples per hour × the range.
    fn estimate(&mut self, req: &Request) -> Result<f64, CompareError> {
        let probe = req.range_s.min(3600);
        let expr = format!("max(count_over_time({}{}[{probe}s]))", cat::KERNEL_INFO.name, self.with(""));
        let per_probe = self.ask(&expr, req.end)?.first().map(|s| instant_value(&expr, s)).transpose()?.flatten().unwrap_or(0.0);
        let names: Vec<&str> = COUNTERS.iter().map(|(_, m, _)| *m).collect();
        let expr = format!("count({})", self.with(&format!("__name__=~\"{}\"", names.join("|"))));
        let series = self.ask(&expr, req.end)?.first().map(|s| instant_value(&expr, s)).transpose()?.flatten().unwrap_or(0.0);
        Ok(series * per_probe * req.range_s as f64 / probe as f64)
    }

    /// Every raw sample of the range.
    fn raw(&mut self, req: &Request) -> Result<Tally, CompareError> {
        let mut tally = Tally::default();
        let expr = format!("{}{}[{}s]", cat::KERNEL_INFO.name, self.with(""), req.range_s);
        let mut kernels = Kernels::default();
        for s in self.ask(&expr, req.end)? {
            let times = self.sample_times(&expr, &s)?;
            let (host, kernel) = (host_of(&s.metric), kernel_of(&s.metric));
            if !times.is_empty() {
                tally.host_in(&kernel, &host);
            }
            kernels.add(&host, &kernel, times);
        }
        kernels.sort();
        for (key, metric, split) in COUNTERS {
            let expr = format!("{metric}{}[{}s]", self.with(""), req.range_s);
            for series in self.ask(&expr, req.end)? {
                self.took(series.values.as_ref().map_or(0, Vec::len))?;
                let samples = counter_samples(&expr, &series)?;
                let m = &series.metric;
                tally.samples(&kernels, &host_of(m), &count_name(key, *split, m), None, None, &samples);
            }
        }
        Ok(tally)
    }

    /// The range in chunks of `chunk_s`, the last one ending at `end`.
    fn chunked(&mut self, req: &Request, chunk_s: u64, raw_chunks: &mut usize) -> Result<Tally, CompareError> {
        let mut tally = Tally::default();
        let end_ms = (req.end * 1000.0).round() as i64;
        let start_ms = end_ms - req.range_s as i64 * 1000;
        let chunk_ms = chunk_s as i64 * 1000;
        // Per series: its last value so far. Per host: its last kernel.
        let mut last: HashMap<String, f64> = HashMap::new();
        let mut host_kernel: HashMap<Host, Kernel> = HashMap::new();
        let mut lo = start_ms;
        while lo < end_ms {
            let hi = (lo + chunk_ms).min(end_ms);
            let t = hi as f64 / 1000.0;
            let w = format!("{}ms", hi - lo);
            // The kernels each host ran in the chunk.
            let expr = format!("last_over_time({}{}[{w}])", cat::KERNEL_INFO.name, self.with(""));
            let mut kernels_in: BTreeMap<Host, BTreeSet<Kernel>> = BTreeMap::new();
            for s in self.ask(&expr, t)? {
                let (host, kernel) = (host_of(&s.metric), kernel_of(&s.metric));
                tally.host_in(&kernel, &host);
                kernels_in.entry(host).or_default().insert(kernel);
            }
            // Series that need their raw samples, by counter.
            let mut need: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
            let mut need_hosts: BTreeSet<Host> = BTreeSet::new();
            for (i, (key, metric, split)) in COUNTERS.iter().enumerate() {
                let sel = self.with("");
                let mut by_id: BTreeMap<String, (BTreeMap<String, String>, [Option<f64>; 3])> = BTreeMap::new();
                for (j, f) in ["last_over_time", "min_over_time", "resets"].iter().enumerate() {
                    let expr = format!("{f}({metric}{sel}[{w}])");
                    for s in self.ask(&expr, t)? {
                        let v = instant_value(&expr, &s)?;
                        let e = by_id.entry(series_id(metric, &s.metric)).or_insert_with(|| (s.metric.clone(), [None; 3]));
                        e.1[j] = v;
                    }
                }
                for (id, (m, [l, lowest, resets])) in by_id {
                    let host = host_of(&m);
                    let kernels = kernels_in.get(&host);
                    let (Some(l), Some(f), Some(resets)) = (l, lowest, resets) else {
                        // Answers that disagree on which series exist: ask for the samples.
                        need.entry(i).or_default().insert(id);
                        need_hosts.insert(host);
                        continue;
                    };
                    // A reset, two kernels in the chunk, or a kernel other than
                    // the host's before it (where exactly it changed is in the samples).
                    let changed = kernels.is_some_and(|k| k.len() > 1 || host_kernel.get(&host).is_some_and(|was| !k.contains(was)));
                    if resets > 0.0 || changed {
                        need.entry(i).or_default().insert(id);
                        need_hosts.insert(host);
                        continue;
                    }
                    let kernel = match kernels.and_then(|k| k.first()) {
                        Some(k) => k.clone(),
                        None => host_kernel.get(&host).cloned().unwrap_or_else(tally::unknown),
                    };
                    let name = count_name(key, *split, &m);
                    // No reset in the chunk: its lowest value is its first.
                    match last.get(&id) {
                        Some(&p) if f < p => tally.step(&kernel, &name, f, true),
                        Some(&p) => tally.step(&kernel, &name, f - p, false),
                        None => tally.step(&kernel, &name, 0.0, false),
                    }
                    tally.step(&kernel, &name, l - f, false);
                    last.insert(id, l);
                }
            }
            // The raw samples of the chunks that need them, a batch of hosts at
            // a time; and the kernel samples of every host that changed kernel
            // (its kernel at the chunk's end is in them).
            for (host, kernels) in &kernels_in {
                if kernels.len() > 1 {
                    need_hosts.insert(host.clone());
                }
            }
            let hosts: Vec<Host> = need_hosts.into_iter().collect();
            // Per batch: its hosts and the matcher that names them.
            let batches: Vec<(BTreeSet<&Host>, String)> = hosts
                .chunks(RAW_BATCH)
                .map(|batch| {
                    let instances: BTreeSet<&str> = batch.iter().map(|h| h.1.as_str()).collect();
                    (batch.iter().collect(), format!("instance=~{}", regex_of(&instances)))
                })
                .collect();
            let mut chunk_kernels = Kernels::default();
            for (wanted, matcher) in &batches {
                let expr = format!("{}{}[{w}]", cat::KERNEL_INFO.name, self.with(matcher));
                for s in self.ask(&expr, t)? {
                    let host = host_of(&s.metric);
                    if !wanted.contains(&host) {
                        continue;
                    }
                    let times = self.sample_times(&expr, &s)?;
                    chunk_kernels.add(&host, &kernel_of(&s.metric), times);
                }
            }
            chunk_kernels.sort();
            for (i, ids) in &need {
                let (key, metric, split) = COUNTERS[*i];
                for (wanted, matcher) in &batches {
                    let expr = format!("{metric}{}[{w}]", self.with(matcher));
                    for series in self.ask(&expr, t)? {
                        let m = &series.metric;
                        let id = series_id(metric, m);
                        if !wanted.contains(&host_of(m)) || !ids.contains(&id) {
                            continue;
                        }
                        self.took(series.values.as_ref().map_or(0, Vec::len))?;
                        let samples = counter_samples(&expr, &series)?;
                        let host = host_of(m);
                        let before = host_kernel.get(&host).cloned();
                        *raw_chunks += 1;
                        if let Some(l) = tally.samples(&chunk_kernels, &host, &count_name(key, split, m), last.get(&id).copied(), before.as_ref(), &samples) {
                            last.insert(id, l);
                        }
                    }
                }
            }
            // Each host's kernel at the chunk's end, for the next.
            for (host, kernels) in kernels_in {
                let k = if kernels.len() == 1 {
                    kernels.into_iter().next()
                } else {
                    Some(chunk_kernels.at(&host, hi, None)).filter(|k| *k != tally::unknown())
                };
                if let Some(k) = k {
                    host_kernel.insert(host, k);
                }
            }
            lo = hi;
        }
        Ok(tally)
    }
}

fn mode_word(c: &Comparison) -> String {
    match c.chunk_seconds {
        Some(s) => format!("chunked mode: {s} s chunks, {} series-chunks as raw samples", c.raw_chunks),
        None => "raw mode".into(),
    }
}

pub fn render(c: &Comparison, format: Format, range: &str) -> String {
    let groups = &c.groups;
    let cell = |g: &Group, k: &str| format!("{}", g.count(k));
    let mut columns: Vec<(String, Box<dyn Fn(&Group) -> String>)> = vec![
        ("patched".into(), Box::new(|g: &Group| g.patched.clone())),
        ("series".into(), Box::new(|g: &Group| g.series.clone())),
        ("release".into(), Box::new(|g: &Group| g.release.clone())),
        ("hosts".into(), Box::new(|g: &Group| g.hosts.to_string())),
        ("reads fast".into(), Box::new(move |g: &Group| cell(g, "reads{path=\"fast\"}"))),
        ("fallback".into(), Box::new(move |g: &Group| cell(g, "reads{path=\"fallback\"}"))),
        ("slow".into(), Box::new(move |g: &Group| cell(g, "reads{path=\"slow\"}"))),
        ("fast-path ratio".into(), Box::new(|g: &Group| g.fast_path_ratio().map_or("–".into(), |r| format!("{:.1}%", r * 100.0)))),
    ];
    // One column per fallback reason: hosts with the opt-in VMA-step probe count
    // the VMA-level ones apart, hosts without count them merged.
    for reason in remote_vm_common::classify::Reason::ALL {
        let key = format!("fallbacks{{reason=\"{}\"}}", reason.label());
        columns.push((reason.label().into(), Box::new(move |g: &Group| cell(g, &key))));
    }
    columns.push(("writes".into(), Box::new(move |g: &Group| cell(g, "writes"))));
    // Stalls per host-hour, then by what the holder was doing: the ops any
    // group had (the JSON has every count).
    let range_s = c.range_seconds;
    let per_hour = move |g: &Group, op: Option<&str>| g.stalls_per_host_hour(op, range_s).map_or("–".into(), |r| format!("{r:.3}"));
    columns.push(("stalls/host-h".into(), Box::new(move |g: &Group| per_hour(g, None))));
    for op in HolderOp::ALL {
        let key = format!("stalls{{op=\"{}\"}}", op.label());
        if groups.iter().any(|g| g.count(&key) > 0.0) {
            columns.push((format!("stalls/host-h {}", op.label()), Box::new(move |g: &Group| per_hour(g, Some(op.label())))));
        }
    }
    columns.push(("counter resets".into(), Box::new(|g: &Group| g.resets.to_string())));
    match format {
        // An interface: fields are added, never renamed or removed.
        Format::Json => {
            let doc = serde_json::json!({
                "range": range,
                "range_seconds": c.range_seconds,
                "groups": groups,
                "end": c.end,
                "mode": c.mode,
                "chunk_seconds": c.chunk_seconds,
                "queries": c.queries,
                "raw_chunks": c.raw_chunks,
            });
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
        }
        Format::Markdown => {
            let mut out = format!("Remote reads by kernel group over {range} ending at Unix time {:.0} (exact counter increases; {})\n\n", c.end, mode_word(c));
            out.push_str(&format!("| {} |\n", columns.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(" | ")));
            out.push_str(&format!("|{}\n", "---|".repeat(columns.len())));
            for g in groups {
                out.push_str(&format!("| {} |\n", columns.iter().map(|(_, f)| f(g)).collect::<Vec<_>>().join(" | ")));
            }
            out
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = std::iter::once(columns.iter().map(|(h, _)| h.clone()).collect())
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

    /// The increase `Tally` counts from one series' values (one a second, one kernel).
    fn exact_increase(values: &[f64]) -> f64 {
        let samples: Vec<(i64, f64)> = values.iter().enumerate().map(|(i, v)| (i as i64 * 1000, *v)).collect();
        let mut t = Tally::default();
        t.samples(&Kernels::default(), &("j".into(), "h".into()), "c", None, None, &samples);
        t.finish().first().map_or(0.0, |g| g.count("c"))
    }

    #[test]
    fn increases_are_exact_across_resets() {
        assert_eq!(exact_increase(&[5.0, 7.0, 7.0, 10.0]), 5.0);
        // A restart: 10 -> 2 means the new daemon counted 2.
        assert_eq!(exact_increase(&[5.0, 10.0, 2.0, 6.0]), 5.0 + 2.0 + 4.0);
        assert_eq!(exact_increase(&[3.0]), 0.0);
        assert_eq!(exact_increase(&[]), 0.0);
    }

    #[test]
    fn stalls_per_host_hour_by_op() {
        let group = |patched: &str, hosts: usize, counts: &[(&str, f64)]| Group {
            patched: patched.into(),
            series: if patched == "yes" { "v1" } else { "none" }.into(),
            release: "6.12".into(),
            hosts,
            counts: counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            resets: 0,
        };
        let c = Comparison {
            groups: vec![
                group("no", 4, &[("stalls{op=\"mprotect\"}", 48.0), ("stalls{op=\"readers\"}", 24.0)]),
                group("yes", 2, &[("stalls{op=\"mprotect\"}", 3.0)]),
            ],
            end: 0.0,
            range_seconds: 6 * 3600,
            mode: Mode::Raw,
            chunk_seconds: None,
            queries: 1,
            raw_chunks: 0,
        };
        // 4 hosts × 6 h: 72 stalls are 3 per host-hour, 2 of them mprotect's.
        assert_eq!(c.groups[0].stalls_per_host_hour(None, c.range_seconds), Some(3.0));
        assert_eq!(c.groups[0].stalls_per_host_hour(Some("mprotect"), c.range_seconds), Some(2.0));
        assert_eq!(c.groups[1].stalls_per_host_hour(Some("readers"), c.range_seconds), Some(0.0));
        let table = render(&c, Format::Markdown, "6h");
        let header = table.lines().find(|l| l.starts_with("| patched")).unwrap();
        // Columns for the ops some group had, none for the others.
        assert!(header.contains("| stalls/host-h | stalls/host-h mprotect | stalls/host-h readers | counter resets |"), "{header}");
        assert!(table.contains("| 3.000 | 2.000 | 1.000 | 0 |"), "{table}");
        assert!(table.contains("| 0.250 | 0.250 | 0.000 | 0 |"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&render(&c, Format::Json, "6h")).unwrap();
        assert_eq!(json["range_seconds"], 21600);
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
    fn a_refused_url_never_shows_its_password() {
        // The first printed the password before the fix.
        for url in [
            "ftp://alice:hunter2@prom.example:9090",
            "alice:hunter2@prom.example:9090",
            "http://alice:hunter2@prom.example:port",
            "http://alice:hunter2@[::1:9090",
            "https://alice:hunter2@a b:1/",
            "http://alice:hunter2@prom.example/?q",
        ] {
            let e = Prometheus::parse(url).err().unwrap_or_else(|| panic!("{url} taken")).to_string();
            assert!(!e.contains("hunter2") && !e.contains("alice"), "{url}: {e}");
            assert!(e.contains("…@"), "{url}: {e}");
        }
    }

    #[test]
    fn credentials_and_the_ca_come_from_files() {
        let dir = std::env::temp_dir().join(format!("rvm-compare-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        use super::super::client::ClientFlags;
        use remote_vm_prom::Auth;
        let conn = |c: ClientFlags| Connection { url: "http://[::1]:9090".into(), client: c }.open().map(|p| p.api.client().options().auth.clone());
        let base = ClientFlags::default;
        let pw = file("pw", "s3cret\n");
        let got = conn(ClientFlags { basic_auth_user: Some("u".into()), basic_auth_password_file: Some(pw.clone()), ..base() }).unwrap();
        assert_eq!(got, Some(Auth::Basic { user: "u".into(), password: "s3cret".into() }));
        let token = file("token", "t0k3n\r\n");
        assert_eq!(conn(ClientFlags { bearer_token_file: Some(token.clone()), ..base() }).unwrap(), Some(Auth::Bearer("t0k3n".into())));
        let err = |c: ClientFlags| conn(c).unwrap_err().to_string();
        let two = file("two", "a\nb\n");
        assert_eq!(
            err(ClientFlags { bearer_token_file: Some(two.clone()), ..base() }),
            format!("--bearer-token-file {}: expected one line", two.display())
        );
        assert!(err(ClientFlags { basic_auth_user: Some("u".into()), ..base() }).contains("needs both --basic-auth-user and --basic-auth-password-file"));
        assert!(err(ClientFlags { basic_auth_user: Some("u".into()), basic_auth_password_file: Some(pw), bearer_token_file: Some(token), ..base() })
            .contains("either basic auth or a bearer token"));
        let missing = dir.join("missing");
        assert!(err(ClientFlags { ca_file: Some(missing.clone()), ..base() }).starts_with(&format!("--ca-file {}: cannot read: ", missing.display())));
        let junk = file("junk.pem", "no certificate here\n");
        assert!(err(ClientFlags { ca_file: Some(junk), ..base() }).contains("the CA file has no PEM certificate"));
        assert_eq!(parse_end("now", 65.0), Ok(5.0));
        assert_eq!(parse_end("1795000000.5", 5.0), Ok(1795000000.5));
        assert!(parse_end("yesterday", 5.0).is_err());
        assert_eq!(parse_chunk("1h").unwrap(), 3600);
        assert_eq!(parse_chunk("30s").unwrap_err().to_string(), "--chunk 30s: expected a duration such as 1h or 1d, at least 1m");
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
                // Every series: `samples` samples, one a second, counting up.
                let result: Vec<serde_json::Value> = (0..hosts)
                    .map(|h| {
                        let metric = serde_json::json!({"job": "remote-vm", "instance": format!("h{h}"),
                            "patched": "yes", "release": "7.3.4", "path": "fast"});
                        let values: Vec<serde_json::Value> = (0..samples).map(|i| serde_json::json!([i, i.to_string()])).collect();
                        serde_json::json!({"metric": metric, "values": values})
                    })
                    .collect();
                let _ = request;
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
        let compare_within = |prom: &Prometheus, limits| {
            compare_answers(|expr, time, answer| prom.query(expr, time, answer), &raw_request(""), limits).map(|c| c.groups)
        };
        // kernel_info's 3 × 5 samples, then each counter's 3 series × 5 samples, all taken.
        let all = 15 * (1 + COUNTERS.len());
        let groups = compare_within(&prom, Limits { series: 3, samples: all }).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].hosts, 3);
        assert_eq!(groups[0].count("reads{path=\"fast\"}"), 12.0);
        assert_eq!(
            compare_within(&prom, Limits { series: 2, samples: 100 }).unwrap_err().to_string(),
            format!("{}{{}}[3600s]: more than 2 series (shorten --range or narrow --selector)", cat::KERNEL_INFO.name)
        );
        // The fourth counter's answer passes 60.
        assert_eq!(
            compare_within(&prom, Limits { series: 3, samples: 60 }).unwrap_err().to_string(),
            "the answers: more than 60 samples (shorten --range or narrow --selector)"
        );
    }

    fn raw_request(selector: &str) -> Request<'_> {
        Request {
            range_s: 3600,
            selector,
            end: 10.0,
            mode: Mode::Raw,
            chunk_s: None,
        }
    }

    /// Answers given as bodies: the kernel_info query first, then every counter.
    fn from_bodies(info: &str, counter: &str) -> Result<Vec<Group>, CompareError> {
        compare_answers(
            |expr, _, limits| query_answer(expr, 200, if expr.starts_with(cat::KERNEL_INFO.name) { info } else { counter }.as_bytes(), limits),
            &raw_request(""),
            LIMITS,
        )
        .map(|c| c.groups)
    }

    #[test]
    fn samples_that_are_not_counter_values_are_refused() {
        let info = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"job":"j","instance":"h","patched":"yes","release":"7.3.4"},"values":[[1,"1"],[2,"1"],[3,"1"]]}]}}"#;
        let counter = |values: &str| {
            format!(
                r#"{{"status":"success","data":{{"resultType":"matrix","result":[
                {{"metric":{{"job":"j","instance":"h","path":"fast"}},"values":{values}}}]}}}}"#
            )
        };
        let groups = from_bodies(info, &counter(r#"[[1,"2"],[2,"5"],[3,"1"]]"#)).unwrap();
        assert_eq!(groups[0].count("reads{path=\"fast\"}"), 3.0 + 1.0);
        assert_eq!(groups[0].resets, COUNTERS.len() as u64, "one per counter: every counter got the same answer");
        // Staleness markers (VictoriaMetrics returns them) are no samples.
        let groups = from_bodies(info, &counter(r#"[[1,"2"],[2,"NaN"],[3,"5"]]"#)).unwrap();
        assert_eq!((groups[0].count("reads{path=\"fast\"}"), groups[0].resets), (3.0, 0));
        let refused = |values: &str| from_bodies(info, &counter(values)).unwrap_err().to_string();
        let reads = format!("{}{{}}[3600s]", cat::READS.name);
        for (values, sample) in [
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
