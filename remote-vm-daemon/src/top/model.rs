//! What `top` shows, computed from two fetches of a daemon (`/metrics` and
//! `/stalls`): pure, so unit tests drive it with synthetic answers.
use remote_vm_common::{
    catalog as cat,
    classify::{Path, Reason},
};
use remote_vm_prom::Scrape;
use serde::Deserialize;

/// `/stalls` as `top` reads it (the shape docs/stalls.md documents; unknown fields are
/// ignored, missing ones default).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct StallsPage {
    pub threshold_seconds: f64,
    /// `None`: the daemon cannot see waits in progress (see its `/healthz`).
    pub in_progress: Option<Vec<Wait>>,
    pub recent: Vec<Wait>,
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Who {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Holder {
    pub kind: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub exact: bool,
    pub op: String,
    pub doing: Option<Doing>,
    pub observed: Option<String>,
    pub stack: Option<Stack>,
}

/// A writer holder's kernel stack (`crate::stacks::Stack`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Stack {
    pub frames: Vec<String>,
    pub unavailable: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Doing {
    pub what: String,
    pub syscall: Option<String>,
    pub nr: Option<u32>,
    pub range: Option<Range>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Range {
    pub address: String,
    pub length: u64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Queued {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub doing: Option<Doing>,
}

impl Doing {
    /// As the daemon's log says it (`crate::stalls::doing_short`).
    fn short(&self) -> String {
        crate::stalls::doing_short(&self.what, self.syscall.as_deref(), self.nr, self.range.as_ref().map(|r| r.length))
    }
}

/// A wait in progress or a stall (`waiting_seconds`/`started` or
/// `waited_seconds`/`ended`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Wait {
    pub reader: Who,
    pub target: Who,
    pub holder: Holder,
    pub writer_waiting: bool,
    pub queued_writer: Option<Queued>,
    pub lock_mode: String,
    pub interface: String,
    pub waiting_seconds: f64,
    pub waited_seconds: f64,
    pub started: String,
    pub ended: String,
    pub killed: bool,
}

impl StallsPage {
    /// Every text field with its control characters escaped.
    fn printable(mut self) -> StallsPage {
        for w in self.in_progress.iter_mut().flatten().chain(self.recent.iter_mut()) {
            for t in [
                &mut w.reader.comm,
                &mut w.target.comm,
                &mut w.holder.comm,
                &mut w.holder.kind,
                &mut w.lock_mode,
                &mut w.interface,
                &mut w.started,
                &mut w.ended,
                &mut w.holder.op,
            ] {
                *t = crate::printable(t);
            }
            if let Some(d) = w.holder.doing.as_mut() {
                d.printable();
            }
            if let Some(st) = w.holder.stack.as_mut() {
                for f in st.frames.iter_mut().chain(st.unavailable.as_mut()) {
                    *f = crate::printable(f);
                }
            }
            if let Some(q) = w.queued_writer.as_mut() {
                q.comm = crate::printable(&q.comm);
                if let Some(d) = q.doing.as_mut() {
                    d.printable();
                }
            }
        }
        self
    }
}

impl Doing {
    fn printable(&mut self) {
        self.what = crate::printable(&self.what);
        if let Some(s) = self.syscall.as_mut() {
            *s = crate::printable(s);
        }
        if let Some(r) = self.range.as_mut() {
            r.address = crate::printable(&r.address);
        }
    }
}

impl Doing {
    /// Everything observed: `syscall mprotect (nr 10) 0x7f… + 1.2 GiB`.
    fn full(&self) -> String {
        let mut out = self.what.clone();
        if let Some(name) = &self.syscall {
            out = format!("{out} {name}");
        }
        if let Some(nr) = self.nr {
            out = format!("{out} (nr {nr})");
        }
        if let Some(r) = &self.range {
            out = format!("{out} {} + {}", r.address, remote_vm_common::user::human_bytes(r.length));
        }
        out
    }
}

impl Wait {
    /// The whole observation, a line per party (`top`'s details key).
    pub fn details(&self) -> Vec<String> {
        let h = &self.holder;
        let mut out = vec![
            format!("reader  {} pid {} tid {} [{} {}]", self.reader.comm, self.reader.pid, self.reader.tid, self.interface, self.lock_mode),
            format!("target  {} pid {}", self.target.comm, self.target.pid),
            format!(
                "holder  {} {} pid {} tid {}{} · op {}{}",
                h.kind,
                h.comm,
                h.pid,
                h.tid,
                if h.exact { "" } else { " (last reader: a hint)" },
                if h.op.is_empty() { "–" } else { &h.op },
                h.observed.as_deref().and_then(|t| t.get(11..23)).map(|t| format!(" · observed {t}")).unwrap_or_default()
            ),
        ];
        if let Some(d) = &h.doing {
            out.push(format!("  doing {}", d.full()));
        }
        match &h.stack {
            Some(Stack { unavailable: Some(why), .. }) => out.push(format!("  stack not shown: {why}")),
            Some(st) => out.extend(st.frames.iter().map(|f| format!("  at {f}"))),
            None => {}
        }
        match (&self.queued_writer, self.writer_waiting) {
            (Some(q), _) => {
                out.push(format!("queued  writer {} pid {} tid {}", q.comm, q.pid, q.tid));
                if let Some(d) = &q.doing {
                    out.push(format!("  doing {}", d.full()));
                }
            }
            (None, true) => out.push("queued  a writer (not named here)".to_string()),
            (None, false) => {}
        }
        out
    }

    /// `reader → target ← holder [interface] · doing`, e.g.
    /// `ps 41/41 → java 124 ← writer GC Thread#0 131 [cmdline] · mprotect 1.2 GiB`:
    /// who waits for whom first, so that a narrow terminal cuts what the
    /// holder does (the details key shows it whole).
    pub fn line(&self) -> String {
        let doing = |d: &Option<Doing>| d.as_ref().map(|d| format!(" {}", d.short())).unwrap_or_default();
        let (holder, holder_doing) = match self.holder.kind.as_str() {
            "writer" | "readers" if self.holder.tid != 0 => {
                let hint = if self.holder.exact { "" } else { "~" };
                let doing = self.holder.doing.as_ref().map(|d| format!(" · {}", d.short())).unwrap_or_default();
                (format!("{} {hint}{} {}", self.holder.kind, self.holder.comm, self.holder.tid), doing)
            }
            kind => (kind.to_string(), String::new()),
        };
        let queued = match (&self.queued_writer, self.writer_waiting) {
            (Some(q), _) => format!(" +writer queued {} {}{}", q.comm, q.tid, doing(&q.doing)),
            (None, true) => " +writer queued".to_string(),
            (None, false) => String::new(),
        };
        format!(
            "{} {}/{} → {} {} ← {holder} [{}]{holder_doing}{queued}",
            self.reader.comm, self.reader.pid, self.reader.tid, self.target.comm, self.target.pid, self.interface
        )
    }
}

/// One fetch of a daemon.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// Seconds on a monotonic clock.
    pub at: f64,
    pub metrics: Scrape,
    /// `None` when `/stalls` is off, not served to this client, or failed.
    pub stalls: Option<StallsPage>,
    /// `/stalls`' status (`None`: the request failed).
    pub stalls_status: Option<u16>,
}

/// Reads by path over the interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Reads {
    /// Per second, in `Path::ALL` order.
    pub per_second: [f64; 3],
    /// Fast reads out of all reads in the interval; `None` without reads.
    pub fast_share: Option<f64>,
}

/// Everything one screen shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub url: String,
    /// `Err(why)`: the last fetch failed (the figures are the last good ones).
    pub reachable: Result<(), String>,
    /// `release`, `patched` and `series` from `remote_vm_kernel_info`
    /// (`series` empty from a daemon that does not export it).
    pub kernel: Option<(String, String, String)>,
    /// Seconds between the two fetches the rates come from (`None`: one fetch so far).
    pub interval: Option<f64>,
    /// `None`: the daemon does not export reads here.
    pub reads: Option<Reads>,
    /// Per second, by reason (only where the daemon exports fallbacks).
    pub fallbacks: Vec<(&'static str, f64)>,
    /// p99 of the remote read-lock waits in the interval (s); `None`: no wait.
    pub wait_p99: Option<f64>,
    pub stalls_per_second: Option<f64>,
    /// Waiters now and the oldest wait's age (s), from the gauges.
    pub waiting: Option<(f64, f64)>,
    pub stalls: Option<StallsPage>,
    /// `/stalls`' status when it was not served (403: not to this client, 404: off).
    pub stalls_status: Option<u16>,
}

/// `name{labels}` summed over every series whose labels include `labels`.
fn sum(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let mut found = None;
    for (series, v) in s.series(name) {
        let inner = series.strip_prefix(name).unwrap_or("");
        if want.iter().all(|w| inner.contains(w.as_str())) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Increase of a counter between two scrapes (a reset counts from 0).
fn increase(prev: f64, cur: f64) -> f64 {
    if cur >= prev { cur - prev } else { cur }
}

/// The cumulative buckets `(le, count)` of a histogram's series with `labels`.
fn buckets(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let mut out: Vec<(f64, f64)> = s
        .series(&bucket)
        .filter(|(series, _)| want.iter().all(|w| series.contains(w.as_str())))
        .filter_map(|(series, v)| {
            let le = series.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of the observations between two cumulative bucket sets,
/// as Prometheus' `histogram_quantile` computes it (linear within a bucket;
/// the +Inf bucket answers its lower bound). `None` without observations.
pub fn quantile(q: f64, prev: &[(f64, f64)], cur: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = cur
        .iter()
        .map(|(le, c)| {
            let p = prev.iter().find(|(l, _)| l == le).map_or(0.0, |(_, p)| *p);
            (*le, increase(p, *c))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let frac = if in_bucket > 0.0 { (rank - lower.1) / in_bucket } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

impl Model {
    /// The screen for `cur` (the latest good fetch), with rates against
    /// `prev`; `reachable` says whether the latest attempt worked.
    pub fn new(url: &str, prev: Option<&Fetch>, cur: Option<&Fetch>, reachable: Result<(), String>) -> Model {
        // Everything drawn from outside text is made printable here: a
        // process's comm (prctl PR_SET_NAME), a label or an error from
        // whatever answers at the URL cannot put escapes on the terminal.
        let p = crate::printable;
        let mut m = Model {
            url: p(url),
            reachable: reachable.map_err(|e| p(&e)),
            kernel: None,
            interval: None,
            reads: None,
            fallbacks: Vec::new(),
            wait_p99: None,
            stalls_per_second: None,
            waiting: None,
            stalls: None,
            stalls_status: None,
        };
        let Some(cur) = cur else { return m };
        let s = &cur.metrics;
        m.kernel = s.series(cat::KERNEL_INFO.name).next().map(|(series, _)| {
            let value = |k: &str| series.split(&format!("{k}=\"")).nth(1).and_then(|v| v.split('"').next());
            let label = |k: &str| value(k).unwrap_or("?").to_string();
            (p(&label("release")), p(&label("patched")), p(value("series").unwrap_or_default()))
        });
        let waiters = s.value(cat::MMAP_LOCK_WAITERS.name, &[]);
        let oldest = s.value(cat::MMAP_LOCK_OLDEST_WAIT.name, &[]);
        m.waiting = waiters.zip(oldest);
        m.stalls = cur.stalls.clone().map(StallsPage::printable);
        m.stalls_status = cur.stalls_status;
        let Some(prev) = prev else { return m };
        let dt = cur.at - prev.at;
        if dt <= 0.0 {
            return m;
        }
        m.interval = Some(dt);
        let p = &prev.metrics;
        let rate = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            Some(increase(sum(p, name, labels)?, sum(s, name, labels)?) / dt)
        };
        let per_path: Vec<Option<f64>> = Path::ALL.iter().map(|path| rate(cat::READS.name, &[("path", path.label())])).collect();
        if let [Some(fast), Some(fallback), Some(slow)] = per_path[..] {
            let all = fast + fallback + slow;
            m.reads = Some(Reads {
                per_second: [fast, fallback, slow],
                fast_share: (all > 0.0).then(|| fast / all),
            });
        }
        m.fallbacks = Reason::ALL
            .iter()
            .filter_map(|r| Some((r.label(), rate(cat::FALLBACKS.name, &[("reason", r.label())])?)))
            .collect();
        let remote_read = [("context", cat::CONTEXT_REMOTE), ("mode", cat::LOCK_READ)];
        m.wait_p99 = quantile(
            0.99,
            &buckets(p, cat::MMAP_LOCK_WAIT.name, &remote_read),
            &buckets(s, cat::MMAP_LOCK_WAIT.name, &remote_read),
        );
        m.stalls_per_second = rate(cat::STALLS.name, &[]);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::{tests_support::fetch, *};

    fn metrics(fast: u64, fallback: u64, slow: u64, waits: [u64; 3], stalls: u64) -> String {
        let mut t = format!(
            "{k}{{release=\"6.12.117\",per_vma_lock=\"yes\",rcu_table_free=\"yes\",patched=\"no\"}} 1\n",
            k = cat::KERNEL_INFO.name
        );
        for (path, n) in [("fast", fast), ("fallback", fallback), ("slow", slow)] {
            t += &format!("{}{{path=\"{path}\"}} {n}\n", cat::READS.name);
        }
        t += &format!("{}{{reason=\"vma_lock_failed\"}} {fallback}\n", cat::FALLBACKS.name);
        // Cumulative buckets at 0.001, 0.1 and 1 s, and +Inf.
        for (le, n) in [("0.001", waits[0]), ("0.1", waits[1]), ("1", waits[2]), ("+Inf", waits[2])] {
            t += &format!(
                "{}_bucket{{context=\"remote_vm\",mode=\"read\",le=\"{le}\"}} {n}\n",
                cat::MMAP_LOCK_WAIT.name
            );
        }
        t += &format!("{}{{lock_mode=\"read\"}} {stalls}\n", cat::STALLS.name);
        t += &format!("{} 1\n{} 2.5\n", cat::MMAP_LOCK_WAITERS.name, cat::MMAP_LOCK_OLDEST_WAIT.name);
        t
    }

    #[test]
    fn rates_shares_and_the_p99_over_the_interval() {
        let a = fetch(10.0, &metrics(100, 10, 0, [5, 5, 5], 1), None);
        let b = fetch(12.0, &metrics(130, 20, 10, [5, 105, 205], 3), None);
        let m = Model::new("u", Some(&a), Some(&b), Ok(()));
        assert_eq!(m.interval, Some(2.0));
        assert_eq!(m.kernel, Some(("6.12.117".into(), "no".into(), String::new())));
        let reads = m.reads.unwrap();
        assert_eq!(reads.per_second, [15.0, 5.0, 5.0]);
        assert_eq!(reads.fast_share, Some(0.6));
        assert_eq!(m.fallbacks.iter().find(|(r, _)| *r == "vma_lock_failed").map(|f| f.1), Some(5.0));
        // 200 waits in the interval: 100 in (0.001, 0.1], 100 in (0.1, 1]; the
        // 198th lies 98 % into the second bucket.
        let p99 = m.wait_p99.unwrap();
        assert!((p99 - (0.1 + 0.9 * 0.98)).abs() < 1e-9, "{p99}");
        assert_eq!(m.stalls_per_second, Some(1.0));
        assert_eq!(m.waiting, Some((1.0, 2.5)));
    }

    #[test]
    fn one_fetch_has_no_rates_and_nothing_has_nothing() {
        let a = fetch(10.0, &metrics(1, 0, 0, [0, 0, 0], 0), None);
        let m = Model::new("u", None, Some(&a), Ok(()));
        assert_eq!((m.interval, m.reads.clone(), m.wait_p99), (None, None, None));
        assert_eq!(m.waiting, Some((1.0, 2.5)));
        let m = Model::new("u", None, None, Err("refused".into()));
        assert_eq!((m.kernel, m.waiting, m.reachable), (None, None, Err("refused".into())));
    }

    #[test]
    fn quantiles_like_prometheus() {
        let none: [(f64, f64); 0] = [];
        // Everything in the +Inf bucket: its lower bound.
        assert_eq!(quantile(0.99, &none, &[(1.0, 0.0), (f64::INFINITY, 4.0)]), Some(1.0));
        // No observation in the interval.
        assert_eq!(quantile(0.99, &[(1.0, 3.0), (f64::INFINITY, 3.0)], &[(1.0, 3.0), (f64::INFINITY, 3.0)]), None);
        // A counter reset (the daemon restarted): counted from 0.
        assert_eq!(quantile(0.5, &[(1.0, 10.0), (f64::INFINITY, 10.0)], &[(1.0, 2.0), (f64::INFINITY, 2.0)]), Some(0.5));
    }

    #[test]
    fn waits_read_as_reader_target_holder() {
        let w = Wait {
            reader: Who { pid: 41, tid: 51, comm: "ps".into() },
            target: Who { pid: 124, tid: 0, comm: "java".into() },
            holder: Holder { kind: "writer".into(), pid: 124, tid: 131, comm: "GC".into(), exact: true, ..Holder::default() },
            interface: "cmdline".into(),
            ..Wait::default()
        };
        assert_eq!(w.line(), "ps 41/51 → java 124 ← writer GC 131 [cmdline]");
        let mut r = w.clone();
        r.holder = Holder { kind: "readers".into(), pid: 124, tid: 133, comm: "VM".into(), exact: false, ..Holder::default() };
        r.writer_waiting = true;
        assert_eq!(r.line(), "ps 41/51 → java 124 ← readers ~VM 133 [cmdline] +writer queued");
        r.holder = Holder { kind: "unknown".into(), ..Holder::default() };
        r.writer_waiting = false;
        assert_eq!(r.line(), "ps 41/51 → java 124 ← unknown [cmdline]");
        // What the holder and the queued writer are doing, after them.
        let mprotect = |len| Doing {
            what: "syscall".into(),
            syscall: Some("mprotect".into()),
            nr: Some(10),
            range: Some(Range { address: "0x7f0000000000".into(), length: len }),
        };
        let mut d = w.clone();
        d.holder.doing = Some(mprotect(1_288_490_189));
        assert_eq!(d.line(), "ps 41/51 → java 124 ← writer GC 131 [cmdline] · mprotect 1.2 GiB");
        d.holder.doing = Some(Doing { what: "fault".into(), ..Doing::default() });
        assert_eq!(d.line(), "ps 41/51 → java 124 ← writer GC 131 [cmdline] · fault");
        d.holder.doing = Some(Doing { what: "syscall".into(), nr: Some(999), ..Doing::default() });
        assert_eq!(d.line(), "ps 41/51 → java 124 ← writer GC 131 [cmdline] · syscall 999");
        let mut q = r.clone();
        q.holder = Holder { kind: "readers".into(), pid: 124, tid: 133, comm: "VM".into(), ..Holder::default() };
        q.writer_waiting = true;
        q.queued_writer = Some(Queued { pid: 124, tid: 140, comm: "mprot".into(), doing: Some(mprotect(4096)) });
        assert_eq!(q.line(), "ps 41/51 → java 124 ← readers ~VM 133 [cmdline] +writer queued mprot 140 mprotect 4.0 KiB");
        // The details key: every field of the observation.
        q.holder.op = "readers".into();
        q.holder.observed = Some("2026-11-25T21:42:31.530Z".into());
        q.lock_mode = "read".into();
        assert_eq!(
            q.details(),
            [
                "reader  ps pid 41 tid 51 [cmdline read]",
                "target  java pid 124",
                "holder  readers VM pid 124 tid 133 (last reader: a hint) · op readers · observed 21:42:31.530",
                "queued  writer mprot pid 124 tid 140",
                "  doing syscall mprotect (nr 10) 0x7f0000000000 + 4.0 KiB",
            ]
        );
        d.holder.doing = Some(mprotect(1 << 30));
        assert!(d.details().contains(&"  doing syscall mprotect (nr 10) 0x7f0000000000 + 1.0 GiB".to_string()));
        // The writer's stack, a frame a line, or why none is shown.
        d.holder.stack = Some(Stack { frames: vec!["mprotect_fixup+0x10d".into(), "do_mprotect_pkey+0x36f".into()], unavailable: None });
        assert!(d.details().ends_with(&["  at mprotect_fixup+0x10d".to_string(), "  at do_mprotect_pkey+0x36f".to_string()]));
        d.holder.stack = Some(Stack { frames: vec![], unavailable: Some("running on CPU 1".into()) });
        assert!(d.details().ends_with(&["  stack not shown: running on CPU 1".to_string()]));
    }
}

#[cfg(test)]
mod printable_tests {
    use super::{tests_support::*, *};

    #[test]
    fn names_from_outside_cannot_put_escapes_on_the_terminal() {
        // A reader that named itself with a screen clear and a carriage return.
        let evil = "\u{1b}[2J\revil\u{9b}1m";
        let page = StallsPage {
            threshold_seconds: 0.1,
            in_progress: Some(vec![Wait {
                reader: Who { pid: 1, tid: 2, comm: evil.into() },
                holder: Holder { kind: "writer".into(), tid: 3, comm: evil.into(), ..Holder::default() },
                interface: evil.into(),
                ..Wait::default()
            }]),
            recent: Vec::new(),
            dropped: 0,
        };
        let text = format!("{}{} 1\n", cat::KERNEL_INFO.name, "{release=\"6.12\u{1b}[31m\",patched=\"no\"}");
        let cur = fetch(1.0, &text, Some(page));
        let m = Model::new("http://x\u{7}", None, Some(&cur), Err("refused\u{1b}]0;title\u{7}".into()));
        let line = m.stalls.as_ref().unwrap().in_progress.as_ref().unwrap()[0].line();
        assert_eq!(line, "\\u{1b}[2J\\revil\\u{9b}1m 1/2 →  0 ← writer ~\\u{1b}[2J\\revil\\u{9b}1m 3 [\\u{1b}[2J\\revil\\u{9b}1m]");
        assert_eq!(m.url, "http://x\\u{7}");
        assert_eq!(m.kernel.as_ref().unwrap().0, "6.12\\u{1b}[31m");
        assert!(!m.reachable.clone().unwrap_err().chars().any(char::is_control));
        let screen = crate::top::view::text(&m, 120, 24);
        assert!(!screen.chars().any(|c| c.is_control() && c != '\n'), "{screen:?}");
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub fn fetch(at: f64, text: &str, stalls: Option<StallsPage>) -> Fetch {
        let stalls_status = stalls.as_ref().map(|_| 200);
        Fetch { at, metrics: Scrape::parse(text).unwrap(), stalls, stalls_status }
    }
}
