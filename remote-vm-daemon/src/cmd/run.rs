//! `run`: bind, attach, drop every privilege, serve until SIGTERM or SIGINT.
use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use super::{Common, EXIT_OK, fail};
use crate::{
    caps,
    kernel::Kernel,
    listen, logging,
    metrics::coverage::Sight,
    notify, server,
    server::State,
    stalls::{self, StallLog},
    status,
};

/// `run`'s own flags, over the config's `[web]`.
#[derive(Debug, Clone, Default)]
pub struct WebFlags {
    /// `--web.listen-address` (alias `--listen`), repeatable.
    pub listen: Vec<SocketAddr>,
    /// `--web.telemetry-path`.
    pub telemetry_path: Option<String>,
    /// `--web.socket` (`Some(None)`: "", none).
    pub socket: Option<Option<std::path::PathBuf>>,
}

impl WebFlags {
    fn apply(&self, config: &mut crate::config::Config) {
        if !self.listen.is_empty() {
            config.listen = self.listen.clone();
        }
        if let Some(p) = &self.telemetry_path {
            config.telemetry_path = p.clone();
        }
        if let Some(s) = &self.socket {
            config.socket = s.clone();
        }
    }
}

pub fn run(common: &Common, flags: &WebFlags) -> ExitCode {
    let mut config = match common.settle() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    flags.apply(&mut config);
    if let Some(twice) = config.listen.iter().enumerate().find_map(|(i, a)| config.listen[..i].contains(a).then_some(a)) {
        return fail(format!("--web.listen-address {twice} given twice"));
    }
    // A bad web config fails before anything is bound or attached.
    let web = match crate::webconfig::Security::load(config.web_config_file.as_deref()) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    logging::init(config.log_level, config.log_format);
    let notify = notify::Notifier::from_env();
    // Bind first (or take systemd's sockets): a taken port fails before
    // anything is attached.
    let mut listening = match listen::listeners(&config, |s| notify.status(s)) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    for note in &listening.notes {
        log::warn!("{note}");
    }
    let urls: Vec<String> = listening.bound.iter().map(|b| b.shown(web.scheme(), &config.telemetry_path)).collect();
    let urls = urls.join(", ") + if listening.passed { " (sockets from systemd)" } else { "" };
    let bound = std::mem::take(&mut listening.bound);
    let web_summary = web.summary.clone();
    let web = Arc::new(crate::webconfig::Switch::new(web));
    notify.status("attaching probes");
    let mut kernel = match Kernel::read(common.btf.as_deref()) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    log::info!("{}", status::kernel_line(&kernel.facts));
    for line in status::contradiction_lines(&kernel.facts) {
        log::warn!("{}", line.trim_start_matches("warning: "));
    }
    log::info!("{}", status::preempt_line(&kernel.facts));
    let (mut session, attached) = match super::load(&kernel, &config) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    for line in status::verdict_lines(&attached) {
        log::info!("{line}");
    }
    log::info!("{}", status::patched_line(&attached));
    log::info!("{}", status::series_line(&attached));
    let (n, points) = attached.probe_counts();
    if n < points {
        log::warn!("degraded: {n} of {points} probes attached; the rest are reported as mode=\"none\"");
    }
    // Probe costs (`self_stats`): needs CAP_SYS_ADMIN, so before the drop.
    session.enable_run_stats(config.self_stats);
    log::info!("{}", session.run_stats_line());
    // aya's BTF of the kernel is tens of MB and no longer needed: give the
    // memory back before the kernel's symbols are read.
    drop(kernel.btf.take());
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    session.start_stacks(&kernel.facts.release);
    // Everything is attached and every fd we need is open: give up all privilege
    // before any other thread exists, so none keeps it.
    // Serving with privileges kept is not an option: exit 1 (systemd restarts
    // a failed unit; the next start tries again).
    match caps::drop_all() {
        Ok(()) => log::info!("dropped all capabilities (CapEff {:#x})", caps::effective().unwrap_or(0)),
        Err(e) => return fail(format!("could not drop capabilities, not serving with them: {e}")),
    }
    session.forward_logs();
    log::info!("{}", session.stacks_line());
    session.start_watcher(config.stall_threshold_ns);
    let stall_log = Arc::new(StallLog::new(config.stalls_keep, config.stall_threshold_ns));
    match session.take_stall_events() {
        Some(ring) => stalls::spawn_reader(ring, stall_log.clone(), session.stacks()),
        None => log::warn!("stalls are counted but not logged: no stall event ring buffer"),
    }
    let sight = Sight::of(&kernel.layout, &attached);
    let Kernel { facts, .. } = kernel;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let state = Arc::new(State {
        stalls: (config.stalls_serve != crate::config::StallsServe::Off).then_some(stall_log),
        stalls_serve: config.stalls_serve,
        socket: listening.socket.clone(),
        facts,
        attached,
        sight,
        session,
        hist_min_log2: config.hist_min_log2,
        hist_max_log2: config.hist_max_log2,
        scrape: Default::default(),
        telemetry_path: config.telemetry_path.clone(),
        web: web.clone(),
        conns: std::sync::Mutex::new(server::conns::Table::new(
            config.max_connections,
            server::conns::Table::per_peer_for(config.max_connections),
        )),
        render_cgroups: std::sync::Mutex::new(crate::cgroups::Paths::of_this_host()),
        renders: std::sync::OnceLock::new(),
    });
    let served = runtime.block_on(async {
        let listeners = bound
            .into_iter()
            .map(|b| match b {
                listen::Bound::Tcp(l) => l.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(l)).map(server::Listener::Tcp),
                listen::Bound::Unix(l, _) => {
                    l.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(l)).map(server::Listener::Unix)
                }
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        // The handler first, then SIGHUP unblocked (a pending one is
        // delivered now and reloads), then READY=1.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => {
                if let Err(e) = crate::hangup::unblock() {
                    log::error!("cannot unblock SIGHUP: {e}; reloads stay pending until a restart");
                }
                tokio::spawn(reload_on_hangup(hup, common.clone(), flags.clone(), config.clone(), state.clone()));
            }
            // Left blocked: a SIGHUP then waits, never ends the daemon.
            Err(e) => log::error!("cannot install the SIGHUP handler: {e}; SIGHUP stays blocked (no reloads until a restart)"),
        }
        log::info!("serving {urls} ({web_summary})");
        notify.send(&format!("READY=1\nSTATUS=serving {urls}; {n} of {points} probes attached"));
        if let Some(every) = watchdog_interval() {
            log::info!("systemd watchdog: WATCHDOG=1 every {:.1} s while the serving thread makes progress", every.as_secs_f64());
            watchdog::start(every, state.clone());
        }
        let limits = server::Limits {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            min_render_interval: config.min_render_interval,
        };
        server::serve(listeners, state.clone(), limits, shutdown_signal()).await;
        Ok::<(), std::io::Error>(())
    });
    notify.send("STOPPING=1\nSTATUS=detaching probes");
    log::info!("shutting down");
    drop(runtime);
    drop(state);
    // The Unix socket this process made goes with it.
    drop(listening);
    match served {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => fail(format!("cannot serve on {urls}: {e}")),
    }
}

/// Half of `WATCHDOG_USEC` when systemd asks this process for watchdog pings
/// (`WatchdogSec=`); see `watchdog`.
fn watchdog_interval() -> Option<std::time::Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}

/// SIGHUP re-reads the config: the log level and the web config (TLS
/// certificates, users: for connections and requests from then on, the
/// listeners kept) take effect; what needs the probes re-attached or
/// privileges (gone by now) is named and left as it is. The files are read
/// and parsed (certificates, hashes) on a blocking thread, not the serving one.
/// Users whose (name, hash) did not change keep their verified passwords; a
/// web config that asks more of clients (TLS where there was none, stricter
/// client certificates, another client CA, a higher TLS version) closes every
/// connection opened under the old one.
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    common: Common,
    flags: WebFlags,
    mut running: crate::config::Config,
    state: Arc<State>,
) {
    while hup.recv().await.is_some() {
        let (common, flags) = (common.clone(), flags.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            common.settle().map(|mut new| {
                // Flags still override the file.
                flags.apply(&mut new);
                let web = crate::webconfig::Security::load(new.web_config_file.as_deref());
                (new, web)
            })
        })
        .await;
        let (new, web) = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                log::error!("SIGHUP: config not reloaded, the running one stays: {e}");
                continue;
            }
            Err(e) => {
                log::error!("SIGHUP: config not reloaded, the running one stays: the reading thread failed: {e}");
                continue;
            }
        };
        if new.log_level != running.log_level {
            logging::set_level(new.log_level);
            running.log_level = new.log_level;
        }
        log::info!("SIGHUP: config re-read; log level {}", new.log_level);
        match web {
            Ok(s) => {
                let was = state.web.current();
                if was.tls.is_some() && s.tls.is_none() {
                    log::warn!("SIGHUP: the web config has no TLS now: plain HTTP from the next connection");
                }
                if was.auth.is_some() && s.auth.is_none() {
                    log::warn!("SIGHUP: the web config has no basic_auth_users now: no authentication from the next request");
                }
                s.keep_verified(&was);
                let tighter = s.strictness.tighter_than(&was.strictness);
                log::info!("SIGHUP: web config re-read: {} from the next connection", s.summary);
                state.web.replace(s);
                if tighter {
                    let n = state.conns().evict_all();
                    log::info!("SIGHUP: the web config asks more of clients now: closed the {n} connections opened under the old one");
                }
            }
            Err(e) => log::error!("SIGHUP: web config not reloaded, the running one stays: {e}"),
        }
        let ignored = running.restart_only_changes(&new);
        if !ignored.is_empty() {
            log::warn!(
                "SIGHUP: {} changed but take effect only on a restart (the probes stay attached as they are; capabilities are gone)",
                ignored.join(", ")
            );
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        log::warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// The systemd watchdog, pinged from a thread of its own only while the
/// serving runtime makes progress: a heartbeat task on it must have beaten
/// within the last interval, and no render may have run for longer than one.
/// Nothing here depends on a scrape arriving (Prometheus may be down for
/// hours: that must never restart the daemon).
mod watchdog {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
        time::{Duration, Instant},
    };

    use crate::{notify, server::State};

    /// Whether to ping: the heartbeat is younger than `every` and no render
    /// has run for `every` or more.
    pub fn alive(heartbeat_age: Duration, render_running_for: Option<Duration>, every: Duration) -> bool {
        heartbeat_age < every && render_running_for.is_none_or(|r| r < every)
    }

    /// The heartbeat task on the serving runtime, the pinging thread beside it.
    pub fn start(every: Duration, state: Arc<State>) {
        let epoch = Instant::now();
        let beat = Arc::new(AtomicU64::new(0));
        let b = beat.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 4);
            loop {
                tick.tick().await;
                b.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
            }
        });
        let spawned = std::thread::Builder::new().name("watchdog".into()).spawn(move || {
            let notify = notify::Notifier::from_env();
            let mut stopped = false;
            loop {
                std::thread::sleep(every);
                let age = epoch.elapsed().saturating_sub(Duration::from_nanos(beat.load(Ordering::Acquire)));
                let render = state.renders.get().and_then(|r| r.running_for());
                if alive(age, render, every) {
                    notify.send("WATCHDOG=1");
                    stopped = false;
                } else if !stopped {
                    stopped = true;
                    log::error!(
                        "watchdog: not pinging systemd: the serving thread last made progress {:.1} s ago{}",
                        age.as_secs_f64(),
                        render.map_or(String::new(), |r| format!(", a render has run for {:.1} s", r.as_secs_f64()))
                    );
                }
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start the watchdog thread: {e}; systemd will restart the daemon when WatchdogSec= passes");
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pings_only_while_the_serving_thread_beats_and_no_render_is_stuck() {
            let every = Duration::from_secs(15);
            let s = Duration::from_secs;
            assert!(alive(s(1), None, every));
            assert!(alive(s(14), Some(s(3)), every));
            assert!(!alive(s(15), None, every), "a serving thread silent for an interval");
            assert!(!alive(s(1), Some(s(15)), every), "a render stuck for an interval");
            // No scrape for hours is no reason to stop: nothing here counts scrapes.
        }
    }
}
