//! The HTTP endpoint: `/metrics`, `/healthz`, `/stalls` and a landing page at
//! `/`, with limits any local user cannot push past: a cap on connections (the
//! oldest idle one makes room), a deadline for each request head (which also
//! ends idle keep-alive connections), a head size limit, an accept loop that
//! backs off instead of spinning when descriptors run out, and `/metrics`
//! renders shared by the requests waiting for them (`Coalescer`), off the
//! accept loop's thread. With a web config (`webconfig`): TLS (the handshake
//! under the same deadline and connection cap as a request head; plain HTTP
//! on a TLS port answered 400) and basic auth on every path.
mod coalesce;
pub mod conns;
mod tls;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{OwnedSemaphorePermit, Semaphore},
};

pub use coalesce::{Coalescer, Want};
use conns::{Admit, Peer, Phase};

use crate::{
    bpf::{Attached, Session},
    config::StallsServe,
    kernel::KernelFacts,
    metrics::{self, View, coverage::Sight},
    stalls::{StallLog, StallsPage},
    status,
    webconfig::{Security, Switch, Verdict},
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
    /// The open connections (`conns::Table::new(max_connections, …)`).
    pub conns: Mutex<conns::Table>,
    /// Cgroup paths for `/stalls`' waits in progress, the render's own.
    pub render_cgroups: Mutex<crate::cgroups::Paths>,
    /// The renders, once `serve` started them (the watchdog asks whether
    /// one is stuck).
    pub renders: std::sync::OnceLock<Arc<Coalescer<Arc<Rendered>>>>,
    /// Who `/stalls` is served to.
    pub stalls_serve: StallsServe,
    /// The Unix socket served on, if any (for the 403's words).
    pub socket: Option<std::path::PathBuf>,
}

impl State {
    /// The connection table (a poisoned lock is taken as it is: the table
    /// stays consistent between calls).
    pub fn conns(&self) -> MutexGuard<'_, conns::Table> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
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

/// One answer a render made, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    pub body: Bytes,
}

/// What one render made: the pages its requests wanted.
#[derive(Debug, Default)]
pub struct Rendered {
    pub metrics: Option<Page>,
    /// `None` too when `/stalls` is off.
    pub stalls: Option<Page>,
}

impl State {
    /// One read of the maps and one run of the task iterator, made into
    /// what `want` asks. A failed read of anything that feeds a counter
    /// answers 503 with one line naming it: never zeros, which would look like
    /// a counter reset (`/stalls`' `dropped` is a counter too; the waits in
    /// progress are a gauge: `null` when the iterator failed).
    fn render(&self, want: Want) -> Arc<Rendered> {
        let snap = match self.session.snapshot(want.stalls && self.stalls.is_some()) {
            Ok(snap) => {
                self.scrape.succeeded();
                snap
            }
            Err(e) => {
                let why = e.to_string();
                self.scrape.failed(&why);
                let page = || Page { status: StatusCode::SERVICE_UNAVAILABLE, body: Bytes::from(why.clone() + "\n") };
                return Arc::new(Rendered {
                    metrics: want.metrics.then(page),
                    stalls: (want.stalls && self.stalls.is_some()).then(page),
                });
            }
        };
        let metrics = want.metrics.then(|| {
            let view = View {
                facts: &self.facts,
                attached: &self.attached,
                sight: self.sight,
                hist_min_log2: self.hist_min_log2,
                hist_max_log2: self.hist_max_log2,
            };
            Page { status: StatusCode::OK, body: Bytes::from(metrics::render(&view, &snap)) }
        });
        let stalls = self.stalls.as_ref().filter(|_| want.stalls).map(|log| {
            // Renders run one at a time: this lock is never waited for.
            let mut cgroups = self.render_cgroups.lock().unwrap_or_else(PoisonError::into_inner);
            let page = StallsPage {
                threshold_seconds: log.threshold_seconds,
                in_progress: snap.waits.as_ref().map(|w| log.in_progress(&w.listed, &mut cgroups, self.session.stacks().as_deref())),
                recent: log.recent(),
                dropped: snap.stats.counters[remote_vm_common::stats::Counter::StallEventsDropped as usize],
            };
            Page { status: StatusCode::OK, body: Bytes::from(serde_json::to_string_pretty(&page).unwrap_or_default() + "\n") }
        });
        Arc::new(Rendered { metrics, stalls })
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

impl Limits {
    /// Sockets the server holds at most: `max_connections` live ones plus
    /// `FD_MARGIN` evicted ones on their way out (and waiting acceptors' turns).
    pub fn max_sockets(&self) -> usize {
        self.max_connections + FD_MARGIN
    }

    /// One TLS handshake's own deadline, from when it has a slot.
    fn handshake_deadline(&self) -> Duration {
        self.header_timeout.min(HANDSHAKE_DEADLINE_MAX)
    }
}

/// The largest request head read (hyper's buffer; its minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// After a failed accept (e.g. EMFILE: out of descriptors) the loop waits this
/// long, doubling up to `ACCEPT_BACKOFF_MAX`, instead of spinning.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this for accept failures and refusals.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Accepted sockets beyond `max_connections`: evicted ones not yet closed by
/// their task, and each acceptor's next one.
pub const FD_MARGIN: usize = remote_vm_common::WEB_FD_MARGIN;
/// TLS handshakes at once (on their own thread).
pub const HANDSHAKE_SLOTS: usize = 8;
/// A handshake's deadline is `header_timeout_seconds`, at most this.
const HANDSHAKE_DEADLINE_MAX: Duration = Duration::from_secs(5);

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
}

/// A warning throttled by a shared `Throttled`, written after its lock is let go.
fn throttled_warn(t: &Mutex<Throttled>, msg: impl FnOnce() -> String) {
    let line = t.lock().unwrap_or_else(PoisonError::into_inner).line(msg);
    if let Some(line) = line {
        log::warn!("{line}");
    }
}

/// Where the endpoint listens: TCP (TLS and basic auth as the web config
/// says) or the Unix socket (every path, `/stalls` included, to whoever may
/// open it: its permissions are the authentication).
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted connection's stream.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// One accepted connection on its way to the serving loop, with its share of
/// the socket budget (released when the socket is gone).
struct Accepted {
    stream: Stream,
    peer: Peer,
    /// Who, for the log: an address, or `uid N` on the Unix socket.
    shown: String,
    permit: OwnedSemaphorePermit,
}

/// What a request's connection says of it.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    /// Who (its place in the bcrypt queue is its own).
    pub peer: Peer,
    /// Over the Unix socket.
    pub unix: bool,
    /// Over TLS with a client certificate the client CA verified.
    pub client_cert: bool,
}

/// Serves on every listener until `shutdown`: one accept loop each, one set
/// of limits (`max_connections` counts the connections of all of them).
pub async fn serve(listeners: Vec<Listener>, state: Arc<State>, limits: Limits, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let sockets = Arc::new(Semaphore::new(limits.max_sockets()));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Accepted>(1);
    let accept_log = Arc::new(Mutex::new(Throttled::default()));
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| tokio::spawn(accept_loop(listener, sockets.clone(), tx.clone(), accept_log.clone())))
        .collect();
    drop(tx);
    let handshakes = match tls::Handshakes::start(HANDSHAKE_SLOTS, limits.handshake_deadline()) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            log::error!("cannot start the TLS handshake thread: {e}; not serving");
            return;
        }
    };
    let cap_log = Arc::new(Mutex::new(Throttled::default()));
    let tls_log = Arc::new(Mutex::new(Throttled::default()));
    let renders = Arc::new(Coalescer::start(limits.min_render_interval, {
        let state = state.clone();
        move |want| state.render(want)
    }));
    let _ = state.renders.set(renders.clone());
    loop {
        let accepted = tokio::select! {
            accepted = rx.recv() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
            () = &mut shutdown => break,
        };
        // The TLS config when the connection came (SIGHUP: the next ones
        // take the new one); never on the Unix socket.
        let tls = match accepted.stream {
            Stream::Tcp(_) => state.web.current().tls.clone(),
            Stream::Unix(_) => None,
        };
        let (admitted, evicted) = state.conns().admit(accepted.peer, tls.is_some());
        if !evicted.is_empty() || admitted == Admit::Refused {
            let max = limits.max_connections;
            throttled_warn(&cap_log, || {
                let peer_cap = evicted.iter().any(|(_, why)| *why == conns::Why::PeerCap);
                match admitted {
                    Admit::Refused => format!("{max} connections open (web.max_connections), each answering a request: a new one from {} refused", accepted.shown),
                    Admit::In(_) if peer_cap => format!(
                        "{} holds {} connections without a request in progress (a quarter of web.max_connections {max}): closed its oldest for its new one",
                        accepted.shown,
                        conns::Table::per_peer_for(max)
                    ),
                    Admit::In(_) => format!("{max} connections open (web.max_connections): closed one of the address holding the most without a request in progress"),
                }
            });
        }
        let Admit::In(id) = admitted else { continue };
        let conn = Conn {
            state: state.clone(),
            renders: renders.clone(),
            id,
            limits,
        };
        let (handshakes, tls_log) = (handshakes.clone(), tls_log.clone());
        let Accepted { stream, shown: peer, permit, peer: who } = accepted;
        let task = tokio::spawn(async move {
            // Its place in the table goes when the task does; its share of
            // the budget when the socket does (during a handshake it travels
            // with the socket).
            let _gone = Gone(conn.state.clone(), id);
            match (stream, tls) {
                (Stream::Unix(stream), _) => {
                    let _permit = permit;
                    conn.serve(stream, Origin { peer: who, unix: true, client_cert: false }).await
                }
                (Stream::Tcp(stream), None) => {
                    let _permit = permit;
                    conn.serve(stream, Origin { peer: who, unix: false, client_cert: false }).await
                }
                (Stream::Tcp(stream), Some(config)) => {
                    let deadline = limits.header_timeout;
                    match tokio::time::timeout(deadline, handshakes.accept(stream, config, permit)).await {
                        Ok(Ok((tls, _permit))) => {
                            conn.state.conns().set(id, Phase::Waiting { served: false });
                            // With a verifier configured, a certificate shown was verified.
                            let client_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                            conn.serve(tls, Origin { peer: who, unix: false, client_cert }).await;
                        }
                        Ok(Err(tls::Failed::Because(why))) => throttled_warn(&tls_log, || format!("TLS handshake with {peer} failed: {why}")),
                        // As an idle plain connection: closed, not worth a warning.
                        Ok(Err(tls::Failed::Quiet)) | Err(_) => {
                            log::debug!("{peer}: no TLS handshake within {deadline:?} (web.header_timeout_seconds): closed")
                        }
                    }
                }
            }
        });
        state.conns().set_abort(id, task.abort_handle());
    }
    for a in acceptors {
        a.abort();
    }
}

/// Takes a connection out of the table when its task ends or is aborted.
struct Gone(Arc<State>, u64);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.conns().gone(self.1);
    }
}

impl Listener {
    /// The next connection: its stream, its peer, and how the log shows it.
    async fn accept(&self) -> std::io::Result<(Stream, Peer, String)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, addr) = l.accept().await?;
                Ok((Stream::Tcp(stream), Peer::of(addr), addr.to_string()))
            }
            Listener::Unix(l) => {
                let (stream, _) = l.accept().await?;
                // SO_PEERCRED: the connecting process's uid (u32::MAX: unknown).
                let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
                Ok((Stream::Unix(stream), Peer::Unix(uid), format!("uid {uid} on the Unix socket")))
            }
        }
    }
}

/// Accepts on one listener and hands each connection to `serve`, each with
/// a share of the socket budget (taken before the accept: out of shares, new
/// connections wait in the kernel's backlog).
async fn accept_loop(listener: Listener, sockets: Arc<Semaphore>, tx: tokio::sync::mpsc::Sender<Accepted>, log: Arc<Mutex<Throttled>>) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let Ok(permit) = sockets.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer, shown)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                if tx.send(Accepted { stream, peer, shown, permit }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                drop(permit);
                // Out of descriptors (EMFILE/ENFILE) or a transient error:
                // wait instead of spinning on the same error.
                throttled_warn(&log, || format!("accept: {e}; retrying in up to {} s", ACCEPT_BACKOFF_MAX.as_secs()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends, is
/// evicted (its task aborted), or idles past the head deadline.
struct Conn {
    state: Arc<State>,
    renders: Arc<Coalescer<Arc<Rendered>>>,
    id: u64,
    limits: Limits,
}

impl Conn {
    async fn serve<S>(self, io: S, origin: Origin)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { state, renders, id, limits } = self;
        // Whether a request of this connection was let in (an idle one then
        // goes after those that never had one).
        let served = Arc::new(AtomicBool::new(false));
        let service = service_fn(move |req| {
            // Called as soon as the head is parsed: busy until the answer's body is gone.
            state.conns().set(id, Phase::Busy);
            let (state, renders, served) = (state.clone(), renders.clone(), served.clone());
            async move {
                let (resp, admitted) = answer(&req, origin, &state, &renders).await;
                if admitted {
                    served.store(true, Ordering::Relaxed);
                }
                let done = Answered { state, id, served };
                Ok::<_, Infallible>(resp.map(|body| Guarded { body, _done: done }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        let _ = builder.serve_connection(TokioIo::new(io), service).await;
    }
}

/// When an answer's body is gone (written into hyper's buffer, or dropped),
/// its connection waits for the next head.
struct Answered {
    state: Arc<State>,
    id: u64,
    served: Arc<AtomicBool>,
}

impl Drop for Answered {
    fn drop(&mut self) {
        let served = self.served.load(Ordering::Relaxed);
        self.state.conns().set(self.id, Phase::Waiting { served });
    }
}

/// An answer's body, with what happens when it is gone.
struct Guarded {
    body: Full<Bytes>,
    _done: Answered,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Basic auth (when configured) on every path, then the route; the
/// configured headers on every answer. Also whether the request was let in.
async fn answer(req: &Request<Incoming>, origin: Origin, state: &State, renders: &Coalescer<Arc<Rendered>>) -> (Response<Full<Bytes>>, bool) {
    let security: Arc<Security> = state.web.current();
    // Basic auth over TCP; on the Unix socket its permissions decided.
    let verdict = match &security.auth {
        Some(auth) if !origin.unix => auth.allows(req.headers().get(header::AUTHORIZATION), origin.peer).await,
        _ => Verdict::In,
    };
    let authenticated = origin.client_cert || (security.auth.is_some() && verdict == Verdict::In);
    let (mut resp, admitted) = match verdict {
        Verdict::In => (route(req, origin, authenticated, state, renders).await, true),
        Verdict::Out => {
            let mut r = text(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", "Unauthorized\n".into());
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic"));
            (r, false)
        }
        Verdict::Busy => {
            let mut r = text(
                StatusCode::TOO_MANY_REQUESTS,
                "text/plain; charset=utf-8",
                format!("{} password checks waiting already: try again\n", crate::webconfig::MAX_QUEUED_CHECKS),
            );
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            (r, false)
        }
    };
    for (name, value) in &security.headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    (resp, admitted)
}

async fn route(req: &Request<Incoming>, origin: Origin, authenticated: bool, state: &State, renders: &Coalescer<Arc<Rendered>>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "only GET\n".into());
    }
    let failed = || text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "render failed (see the log)\n".into());
    match req.uri().path() {
        p if p == state.telemetry_path => match renders.get(Want::METRICS).await.and_then(|r| r.metrics.clone()) {
            Some(Page { status: StatusCode::OK, body }) => bytes(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body),
            Some(Page { status, body }) => bytes(status, "text/plain; charset=utf-8", body),
            None => failed(),
        },
        "/healthz" => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            status::healthz(
                &state.facts,
                &state.attached,
                &state.sight,
                &[state.session.stacks_line(), state.session.run_stats_line()],
                state.scrape.failure().as_deref(),
            ),
        ),
        "/stalls" if state.stalls.is_none() || state.stalls_serve == StallsServe::Off => {
            text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found ([stalls] serve = \"off\")\n".into())
        }
        "/stalls" if !state.stalls_serve.allows(origin.unix, authenticated) => {
            text(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", stalls_forbidden(state))
        }
        "/stalls" => match renders.get(Want::STALLS).await.and_then(|r| r.stalls.clone()) {
            Some(Page { status: StatusCode::OK, body }) => bytes(StatusCode::OK, "application/json", body),
            Some(Page { status, body }) => {
                state.scrape.warn(|| format!("/stalls answers {status}: {}", String::from_utf8_lossy(&body).trim_end()));
                bytes(status, "text/plain; charset=utf-8", body)
            }
            None => failed(),
        },
        "/" => text(StatusCode::OK, "text/html; charset=utf-8", landing(&state.telemetry_path)),
        _ => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

/// Why `/stalls` is not served to this request, and where it is.
fn stalls_forbidden(state: &State) -> String {
    let socket = match &state.socket {
        Some(p) => format!("on the Unix socket {} to whoever may open it", p.display()),
        None => "on no Unix socket (web.socket is empty)".to_string(),
    };
    match state.stalls_serve {
        StallsServe::Authenticated => format!(
            "/stalls names which process reads which, with cgroup paths: served {socket}, and over TCP only to requests that authenticated (basic auth or a client certificate: web.config_file) ([stalls] serve = \"authenticated\")\n"
        ),
        s => format!("/stalls names which process reads which, with cgroup paths: served {socket} only ([stalls] serve = \"{}\")\n", s.name()),
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

