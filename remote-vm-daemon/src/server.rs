//! The HTTP endpoint: `/metrics`, `/healthz` and a landing page at `/`.
use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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

pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    log::warn!("accept: {e}");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
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
