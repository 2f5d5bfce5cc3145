//! The HTTP endpoint: `/metrics`, `/healthz`, `/stalls` and a landing page at
//! `/`, with limits any local user cannot push past: a cap on connections (the
//! oldest idle one makes room), a deadline for each request head (which also
//! ends idle keep-alive connections), a head size limit, and an accept loop that
//! backs off instead of spinning when descriptors run out.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Notify};

use crate::{
    bpf::{Attached, Session},
    kernel::KernelFacts,
    metrics::{self, View, coverage::Sight},
    stalls::{StallLog, StallsPage},
    status,
};

/// What the endpoint serves from: the attached session and the facts fixed at start-up.
pub struct State {
    /// The stall log, when `/stalls` is served.
    pub stalls: Option<Arc<StallLog>>,
    pub facts: KernelFacts,
    pub attached: Attached,
    pub sight: Sight,
    pub session: Session,
    pub hist_min_log2: u32,
    pub hist_max_log2: u32,
}

impl State {
    fn metrics(&self) -> String {
        let view = View {
            facts: &self.facts,
            attached: &self.attached,
            sight: self.sight,
            hist_min_log2: self.hist_min_log2,
            hist_max_log2: self.hist_max_log2,
        };
        metrics::render(&view, &self.session.snapshot())
    }

    fn stalls(&self, log: &StallLog) -> String {
        let dropped = self.session.counter(remote_vm_common::stats::Counter::StallEventsDropped);
        let page = StallsPage {
            threshold_seconds: log.threshold_seconds,
            in_progress: self.session.waits_now().map(|w| log.in_progress(&w.listed)),
            recent: log.recent(),
            dropped,
        };
        serde_json::to_string_pretty(&page).unwrap_or_default() + "\n"
    }
}

const LANDING: &str = "<!doctype html>\n<html><head><title>remote-vm</title></head><body>\n\
<h1>remote-vm</h1>\n<p>Remote-memory reads (<code>__access_remote_vm</code>) by path: fast, fallback, slow.</p>\n\
<ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a> (probe verdicts)</li>\
<li><a href=\"/stalls\">/stalls</a> (recent stalls)</li></ul>\n\
</body></html>\n";

/// The listener's limits (`[web]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// The largest request head read (hyper's buffer; its minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// After a failed accept (e.g. EMFILE: out of descriptors) the loop waits this
/// long, doubling up to `ACCEPT_BACKOFF_MAX`, instead of spinning.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this for accept failures and refusals.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One open connection: whether it completed a request, and how to close it.
struct Conn {
    served: Arc<AtomicU64>,
    close: Arc<Notify>,
}

/// Open connections by age (ids grow).
#[derive(Default)]
struct Conns {
    next: u64,
    open: BTreeMap<u64, Conn>,
}

impl Conns {
    /// The connection to close for a new one: the oldest that never completed
    /// a request (a slow or idle client), else the oldest idle keep-alive one.
    fn victim(&self) -> Option<u64> {
        let never = self.open.iter().find(|(_, c)| c.served.load(Ordering::Relaxed) == 0).map(|(id, _)| *id);
        never.or_else(|| self.open.keys().next().copied())
    }
}

/// A log line at most every `LOG_EVERY`, saying how many were held back.
struct Throttled {
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    fn log(&mut self, msg: impl FnOnce() -> String) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.held += 1;
            return;
        }
        let held = std::mem::take(&mut self.held);
        let more = if held > 0 { format!(" ({held} more since the last line)") } else { String::new() };
        log::warn!("{}{more}", msg());
        self.last = Some(now);
    }
}

pub async fn serve(listener: TcpListener, state: Arc<State>, limits: Limits, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut accept_log = Throttled { last: None, held: 0 };
    let mut cap_log = Throttled { last: None, held: 0 };
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    conn
                }
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a transient error:
                    // wait instead of spinning on the same error.
                    accept_log.log(|| format!("accept: {e}; retrying in up to {} s", ACCEPT_BACKOFF_MAX.as_secs()));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        () = &mut shutdown => return,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (id, served, close) = {
            let Ok(mut c) = conns.lock() else { return };
            if c.open.len() >= limits.max_connections {
                match c.victim() {
                    Some(victim) => {
                        if let Some(v) = c.open.remove(&victim) {
                            v.close.notify_one();
                        }
                        cap_log.log(|| format!("{} connections open (web.max_connections): closed the oldest idle one", limits.max_connections));
                    }
                    None => continue,
                }
            }
            let id = c.next;
            c.next += 1;
            let conn = Conn {
                served: Arc::new(AtomicU64::new(0)),
                close: Arc::new(Notify::new()),
            };
            let handles = (conn.served.clone(), conn.close.clone());
            c.open.insert(id, conn);
            (id, handles.0, handles.1)
        };
        let (state, conns) = (state.clone(), conns.clone());
        tokio::spawn(async move {
            let counted = served.clone();
            let service = service_fn(move |req| {
                let state = state.clone();
                counted.fetch_add(1, Ordering::Relaxed);
                async move { Ok::<_, Infallible>(route(&req, &state)) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {},
                () = close.notified() => {
                    conn.as_mut().graceful_shutdown();
                    // An idle connection ends at once; anything else gets the head timeout.
                    let _ = tokio::time::timeout(limits.header_timeout, conn).await;
                }
            }
            if let Ok(mut c) = conns.lock() {
                c.open.remove(&id);
            }
        });
    }
}

fn route(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics(),
        ),
        "/healthz" => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            status::healthz(&state.facts, &state.attached, &state.sight),
        ),
        "/stalls" => match &state.stalls {
            Some(log) => text(StatusCode::OK, "application/json", state.stalls(log)),
            None => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found (stalls.http = false)\n".into()),
        },
        "/" => text(StatusCode::OK, "text/html; charset=utf-8", LANDING.to_string()),
        _ => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}
