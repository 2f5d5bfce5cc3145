//! The HTTP endpoint: `/metrics`, `/healthz`, `/stalls` and a landing page at
//! `/`, with limits any local user cannot push past: a cap on connections (the
//! oldest idle one makes room), a deadline for each request head (which also
//! ends idle keep-alive connections), a head size limit, an accept loop that
//! backs off instead of spinning when descriptors run out, and `/metrics`
//! renders shared by the requests waiting for them (`Coalescer`), off the
//! accept loop's thread. With a web config (`webconfig`): TLS (the handshake
//! under the same deadline and connection cap as a request head; plain HTTP
//! on a TLS port answered 400) and basic auth on every path.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
};

use crate::{
    bpf::{Attached, ReadError, Session},
    kernel::KernelFacts,
    metrics::{self, View, coverage::Sight},
    stalls::{StallLog, StallsPage},
    status,
    webconfig::{Security, Switch},
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
    pub scrape: ScrapeHealth,
    /// Where `/metrics` is served (`web.telemetry_path`).
    pub telemetry_path: String,
    /// TLS and basic auth (`--web.config.file`), replaced on SIGHUP.
    pub web: Arc<Switch>,
}

/// Why the last `/metrics` render failed, while it does (for `/healthz`).
#[derive(Default)]
pub struct ScrapeHealth {
    failure: Mutex<Option<String>>,
    log: Mutex<Throttled>,
}

impl ScrapeHealth {
    fn failed(&self, why: &str) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_string());
        self.warn(|| format!("/metrics answers 503: {why}"));
    }

    fn succeeded(&self) {
        if self.failure.lock().unwrap_or_else(PoisonError::into_inner).take().is_some() {
            log::info!("/metrics answers 200 again: every counter read");
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn warn(&self, msg: impl FnOnce() -> String) {
        throttled_warn(&self.log, msg);
    }
}

/// One `/metrics` answer, shared by every request that waited for its render.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    pub body: Bytes,
}

impl State {
    /// A failed read of anything that feeds a counter answers 503 with one
    /// line naming it: never zeros, which would look like a counter reset.
    fn metrics(&self) -> Page {
        let view = View {
            facts: &self.facts,
            attached: &self.attached,
            sight: self.sight,
            hist_min_log2: self.hist_min_log2,
            hist_max_log2: self.hist_max_log2,
        };
        match self.session.snapshot() {
            Ok(snap) => {
                self.scrape.succeeded();
                Page {
                    status: StatusCode::OK,
                    body: Bytes::from(metrics::render(&view, &snap)),
                }
            }
            Err(e) => {
                let why = e.to_string();
                self.scrape.failed(&why);
                Page {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    body: Bytes::from(why + "\n"),
                }
            }
        }
    }

    /// `dropped` is a counter: when it cannot be read, `/stalls` answers 503
    /// with the reason, as `/metrics` does, rather than a wrong number (the
    /// waits in progress are a gauge: `null` when the iterator failed).
    fn stalls(&self, log: &StallLog) -> Result<String, ReadError> {
        let dropped = self.session.counter(remote_vm_common::stats::Counter::StallEventsDropped)?;
        let page = StallsPage {
            threshold_seconds: log.threshold_seconds,
            in_progress: self.session.waits_now().map(|w| log.in_progress(&w.listed)),
            recent: log.recent(),
            dropped,
        };
        Ok(serde_json::to_string_pretty(&page).unwrap_or_default() + "\n")
    }
}

/// Renders shared by the requests waiting for them: at most one runs at a
/// time (on a blocking thread), each request is answered by the first render
/// that started after it arrived (never older numbers than the request), and
/// renders start at least `spacing` apart.
pub struct Coalescer<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    renders: Mutex<Generations>,
    wake: Notify,
    /// The last render done: its generation and result (`None`: it panicked).
    done: watch::Sender<(u64, Option<T>)>,
}

#[derive(Default)]
struct Generations {
    /// Renders started so far (the generation of the latest).
    started: u64,
    /// A request waits for a render not started yet.
    wanted: bool,
}

impl<T: Clone + Send + Sync + 'static> Coalescer<T> {
    /// Spawns the task that runs `render` when requests want it.
    pub fn start(spacing: Duration, render: impl Fn() -> T + Send + Sync + 'static) -> Coalescer<T> {
        let shared = Arc::new(Shared {
            renders: Mutex::new(Generations::default()),
            wake: Notify::new(),
            done: watch::Sender::new((0, None)),
        });
        tokio::spawn(drive(shared.clone(), spacing, Arc::new(render)));
        Coalescer { shared }
    }

    /// The result of the first render that starts after this call (`None`:
    /// it panicked).
    pub async fn get(&self) -> Option<T> {
        let mut done = self.shared.done.subscribe();
        let want = {
            let mut g = self.shared.renders.lock().unwrap_or_else(PoisonError::into_inner);
            g.wanted = true;
            g.started + 1
        };
        self.shared.wake.notify_one();
        // The sender lives in `shared`, which we hold: never closed.
        let got = done.wait_for(|(generation, _)| *generation >= want).await.ok()?;
        got.1.clone()
    }
}

/// Runs a render when requests want one: one at a time, `spacing` apart.
async fn drive<T: Send + Sync + 'static>(shared: Arc<Shared<T>>, spacing: Duration, render: Arc<dyn Fn() -> T + Send + Sync>) {
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        shared.wake.notified().await;
        if let Some(last) = last {
            tokio::time::sleep_until(last + spacing).await;
        }
        // Requests that arrived up to here are served by this render.
        let generation = {
            let mut g = shared.renders.lock().unwrap_or_else(PoisonError::into_inner);
            if !g.wanted {
                // A wake-up from a request the last render already took.
                continue;
            }
            g.wanted = false;
            g.started += 1;
            g.started
        };
        last = Some(tokio::time::Instant::now());
        let render = render.clone();
        let result = tokio::task::spawn_blocking(move || render()).await.ok();
        shared.done.send_replace((generation, result));
    }
}

/// The landing page: the version and the endpoints (`path`: the metrics path,
/// validated by the config: no characters HTML would need escaped but `&`).
fn landing(path: &str) -> String {
    let path = path.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    format!(
        "<!doctype html>\n<html><head><title>remote-vm</title></head><body>\n\
<h1>remote-vm {}</h1>\n<p>Remote-memory reads (<code>__access_remote_vm</code>) by path: fast, fallback, slow.</p>\n\
<ul><li><a href=\"{path}\">{path}</a></li><li><a href=\"/healthz\">/healthz</a> (probe verdicts)</li>\
<li><a href=\"/stalls\">/stalls</a> (recent stalls)</li></ul>\n\
</body></html>\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The listener's limits (`[web]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// `/metrics` renders start at least this far apart.
    pub min_render_interval: Duration,
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
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    /// The line to log now, if one is due (the caller logs it after letting
    /// go of any lock: a stalled stderr must not hold up other threads).
    fn line(&mut self, msg: impl FnOnce() -> String) -> Option<String> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.held += 1;
            return None;
        }
        let held = std::mem::take(&mut self.held);
        let more = if held > 0 { format!(" ({held} more since the last line)") } else { String::new() };
        self.last = Some(now);
        Some(format!("{}{more}", msg()))
    }

    fn log(&mut self, msg: impl FnOnce() -> String) {
        if let Some(line) = self.line(msg) {
            log::warn!("{line}");
        }
    }
}

/// A warning throttled by a shared `Throttled`, written after its lock is let go.
fn throttled_warn(t: &Mutex<Throttled>, msg: impl FnOnce() -> String) {
    let line = t.lock().unwrap_or_else(PoisonError::into_inner).line(msg);
    if let Some(line) = line {
        log::warn!("{line}");
    }
}

/// Serves on every listener until `shutdown`: one accept loop each, one set
/// of limits (`max_connections` counts the connections of all of them).
pub async fn serve(listeners: Vec<TcpListener>, state: Arc<State>, limits: Limits, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::net::TcpStream, std::net::SocketAddr)>(1);
    let accept_log = Arc::new(Mutex::new(Throttled::default()));
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| tokio::spawn(accept_loop(listener, tx.clone(), accept_log.clone())))
        .collect();
    drop(tx);
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut cap_log = Throttled::default();
    let tls_log = Arc::new(Mutex::new(Throttled::default()));
    let metrics = Arc::new(Coalescer::start(limits.min_render_interval, {
        let state = state.clone();
        move || state.metrics()
    }));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = rx.recv() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let (id, served, close) = {
            let Ok(mut c) = conns.lock() else { break };
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
        let (state, conns, metrics, tls_log) = (state.clone(), conns.clone(), metrics.clone(), tls_log.clone());
        tokio::spawn(async move {
            // The TLS config when the connection came (SIGHUP: the next ones take the new one).
            let tls = state.web.current().tls.clone();
            let http = Http { state, metrics, served, close: close.clone(), limits };
            match tls {
                None => http.serve(stream).await,
                Some(config) => {
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(limits.header_timeout, handshake(stream, config)) => r,
                        () = close.notified() => Ok(Err(None)),
                    };
                    match handshake {
                        Ok(Ok(tls)) => http.serve(tls).await,
                        Ok(Err(None)) => {}
                        Ok(Err(Some(why))) => throttled_warn(&tls_log, || format!("TLS handshake with {peer} failed: {why}")),
                        // As an idle plain connection: closed, not worth a warning.
                        Err(_) => log::debug!("{peer}: no TLS handshake within {:?} (web.header_timeout_seconds): closed", limits.header_timeout),
                    }
                }
            }
            if let Ok(mut c) = conns.lock() {
                c.open.remove(&id);
            }
        });
    }
    for a in acceptors {
        a.abort();
    }
}

/// Accepts on one listener and hands each connection to `serve`.
async fn accept_loop(listener: TcpListener, tx: tokio::sync::mpsc::Sender<(tokio::net::TcpStream, std::net::SocketAddr)>, log: Arc<Mutex<Throttled>>) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                if tx.send(accepted).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a transient error:
                // wait instead of spinning on the same error.
                throttled_warn(&log, || format!("accept: {e}; retrying in up to {} s", ACCEPT_BACKOFF_MAX.as_secs()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// What a TLS record starts with (a handshake); an HTTP request starts with a
/// method's letters.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The TLS handshake: the stream, or why not (`None`: the client left).
/// Plain HTTP to a TLS port is answered 400 saying so, as Go's servers do.
async fn handshake(
    stream: tokio::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Option<String>> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => return Err(None),
        Ok(_) => {}
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let mut stream = stream;
        let body = "Client sent an HTTP request to an HTTPS server.\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Read what the client sent (a little, briefly): closing with it
        // unread would reset the connection before the client reads the 400.
        use tokio::io::AsyncReadExt;
        let mut sink = [0u8; 4096];
        let drain = async {
            let mut left: usize = 16 * 1024;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
        return Err(Some("plain HTTP to the TLS port (answered 400)".into()));
    }
    tokio_rustls::TlsAcceptor::from(config).accept(stream).await.map_err(|e| Some(e.to_string()))
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends, is closed
/// for a newer one, or idles past the head deadline.
struct Http {
    state: Arc<State>,
    metrics: Arc<Coalescer<Page>>,
    served: Arc<AtomicU64>,
    close: Arc<Notify>,
    limits: Limits,
}

impl Http {
    async fn serve<S>(self, io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Http { state, metrics, served, close, limits } = self;
        let service = service_fn(move |req| {
            let (state, metrics, served) = (state.clone(), metrics.clone(), served.clone());
            async move {
                let (resp, admitted) = answer(&req, &state, &metrics).await;
                // Only a request let in makes a connection "served": a client
                // answered 401 stays first in line to be closed for a new one.
                if admitted {
                    served.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {},
            () = close.notified() => {
                conn.as_mut().graceful_shutdown();
                // An idle connection ends at once; anything else gets the head timeout.
                let _ = tokio::time::timeout(limits.header_timeout, conn).await;
            }
        }
    }
}

/// Basic auth (when configured) on every path, then the route; the
/// configured headers on every answer. Also whether the request was let in.
async fn answer(req: &Request<Incoming>, state: &State, metrics: &Coalescer<Page>) -> (Response<Full<Bytes>>, bool) {
    let security: Arc<Security> = state.web.current();
    let (mut resp, admitted) = match &security.auth {
        Some(auth) if !auth.allows(req.headers().get(header::AUTHORIZATION)).await => {
            let mut r = text(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", "Unauthorized\n".into());
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic"));
            (r, false)
        }
        _ => (route(req, state, metrics).await, true),
    };
    for (name, value) in &security.headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    (resp, admitted)
}

async fn route(req: &Request<Incoming>, state: &State, metrics: &Coalescer<Page>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "only GET\n".into());
    }
    match req.uri().path() {
        p if p == state.telemetry_path => match metrics.get().await {
            Some(Page { status: StatusCode::OK, body }) => bytes(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body),
            Some(Page { status, body }) => bytes(status, "text/plain; charset=utf-8", body),
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "render failed (see the log)\n".into()),
        },
        "/healthz" => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            status::healthz(
                &state.facts,
                &state.attached,
                &state.sight,
                &state.session.run_stats_line(),
                state.scrape.failure().as_deref(),
            ),
        ),
        "/stalls" => match &state.stalls {
            Some(log) => match state.stalls(log) {
                Ok(page) => text(StatusCode::OK, "application/json", page),
                Err(e) => {
                    state.scrape.warn(|| format!("/stalls answers 503: {e}"));
                    text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", format!("{e}\n"))
                }
            },
            None => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found (stalls.http = false)\n".into()),
        },
        "/" => text(StatusCode::OK, "text/html; charset=utf-8", landing(&state.telemetry_path)),
        _ => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    bytes(status, content_type, Bytes::from(body))
}

fn bytes(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tokio::time::Instant;

    use super::*;

    const SPACING: Duration = Duration::from_millis(100);

    /// A render that returns how many renders ran, each at the instant recorded.
    fn counting(starts: Arc<Mutex<Vec<Instant>>>) -> impl Fn() -> usize + Send + Sync + 'static {
        move || {
            let mut s = starts.lock().unwrap();
            s.push(Instant::now());
            s.len()
        }
    }

    fn spawn_get<T: Clone + Send + Sync + 'static>(c: &Arc<Coalescer<T>>) -> tokio::task::JoinHandle<Option<T>> {
        let c = c.clone();
        tokio::spawn(async move { c.get().await })
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_render() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(Coalescer::start(SPACING, counting(starts.clone())));
        let waiting: Vec<_> = (0..64).map(|_| spawn_get(&c)).collect();
        for w in waiting {
            assert!(matches!(w.await.unwrap(), Some(1 | 2)));
        }
        assert!((1..=2).contains(&starts.lock().unwrap().len()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_after_a_render_started_waits_for_the_next() {
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let (gate_tx, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let runs = AtomicU64::new(0);
        let c = Arc::new(Coalescer::start(SPACING, move || {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            started_tx.send((n, Instant::now())).unwrap();
            gate.lock().unwrap().recv().unwrap();
            n
        }));
        let first = spawn_get(&c);
        let (n, t1) = started.recv().await.unwrap();
        assert_eq!(n, 1);
        // Arrives while render 1 runs: its numbers may predate the request.
        let second = spawn_get(&c);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Some(1));
        let (n, t2) = started.recv().await.unwrap();
        assert_eq!(n, 2);
        assert!(t2 - t1 >= SPACING, "{:?}", t2 - t1);
        gate_tx.send(()).unwrap();
        assert_eq!(second.await.unwrap(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn renders_start_no_more_often_than_the_spacing() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(Coalescer::start(SPACING, counting(starts.clone())));
        let mut last = 0;
        for _ in 0..5 {
            // Each request is answered by a render that started after it.
            let n = c.get().await.unwrap();
            assert_eq!(n, last + 1);
            last = n;
        }
        let starts = starts.lock().unwrap();
        assert_eq!(starts.len(), 5);
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= SPACING, "{:?}", pair[1] - pair[0]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_spacing_still_coalesces() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(Coalescer::start(Duration::ZERO, counting(starts.clone())));
        for want in 1..=3 {
            assert_eq!(c.get().await, Some(want));
        }
        let waiting: Vec<_> = (0..16).map(|_| spawn_get(&c)).collect();
        for w in waiting {
            assert!(matches!(w.await.unwrap(), Some(4 | 5)));
        }
        assert!((4..=5).contains(&starts.lock().unwrap().len()));
    }

    #[tokio::test]
    async fn a_render_that_panics_answers_none_and_the_next_one_runs() {
        let runs = AtomicU64::new(0);
        let c = Coalescer::start(Duration::ZERO, move || {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            assert!(n > 0, "first render fails (expected in this test)");
            n
        });
        assert_eq!(c.get().await, None);
        assert_eq!(c.get().await, Some(1));
    }
}
