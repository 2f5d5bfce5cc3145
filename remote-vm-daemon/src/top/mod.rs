//! `remote-vm-daemon top`: a live terminal view of a running daemon over HTTP
//! (no privileges): remote reads/s by path and the fast-path share, fallbacks
//! by reason, the remote wait p99, waits in progress as
//! `reader → target ← holder`, recent stalls. A fetch thread polls `/metrics`
//! and `/stalls` every interval; the terminal thread draws and reads keys. A
//! daemon that goes away is shown as such and polled on.
pub(crate) mod model;
mod view;

use std::{
    process::ExitCode,
    sync::mpsc,
    time::{Duration, Instant},
};

use remote_vm_prom::{Client, Options, Scrape};

use self::model::{Fetch, Model, StallsPage};
use crate::cmd::{EXIT_FAILED, EXIT_OK, client::ClientFlags, fail};

/// One poll: both endpoints, or why not.
fn fetch(client: &Client, epoch: Instant) -> Result<Fetch, String> {
    let metrics = Scrape::fetch_with(client).map_err(|e| e.to_string())?;
    // `/stalls` may be off (404) or not for this client (403): the rest of
    // the screen still works.
    let (stalls, stalls_status) = match client.get("/stalls") {
        Ok((200, body)) => (serde_json::from_str::<StallsPage>(&body).ok(), Some(200)),
        Ok((status, _)) => (None, Some(status)),
        Err(_) => (None, None),
    };
    Ok(Fetch { at: epoch.elapsed().as_secs_f64(), metrics, stalls, stalls_status })
}

/// The last two good fetches and how the latest attempt went.
#[derive(Default)]
struct History {
    prev: Option<Fetch>,
    cur: Option<Fetch>,
    last: Option<Result<(), String>>,
}

impl History {
    fn push(&mut self, r: Result<Fetch, String>) {
        match r {
            Ok(f) => {
                self.prev = self.cur.take();
                self.cur = Some(f);
                self.last = Some(Ok(()));
            }
            Err(e) => self.last = Some(Err(e)),
        }
    }

    fn model(&self, url: &str) -> Model {
        let reachable = self.last.clone().unwrap_or(Ok(()));
        Model::new(url, self.prev.as_ref(), self.cur.as_ref(), reachable)
    }
}

fn client(url: &str, flags: &ClientFlags, interval: Duration) -> Result<Client, String> {
    let wait = interval.max(Duration::from_secs(1)) * 2;
    let options = Options { connect_timeout: wait, timeout: wait, max_body: 16 << 20, ..Options::default() };
    let options = flags.options(options).map_err(|e| e.to_string())?;
    Client::with_options(url, options).map_err(|e| e.to_string())
}

pub fn top(url: &str, flags: &ClientFlags, interval: Duration, once: bool) -> ExitCode {
    let client = match client(url, flags, interval) {
        Ok(c) => c,
        Err(e) => return fail(format!("top: {e}")),
    };
    if once {
        return once_frame(url, &client, interval);
    }
    match live(url, client, interval) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => fail(format!("top: {e}")),
    }
}

/// Two fetches `interval` apart (rates need two), one frame on stdout (80
/// columns, or the terminal's width), exit 0; 1 when the daemon did not answer.
fn once_frame(url: &str, client: &Client, interval: Duration) -> ExitCode {
    let epoch = Instant::now();
    let mut h = History::default();
    h.push(fetch(client, epoch));
    if h.cur.is_some() {
        std::thread::sleep(interval);
        h.push(fetch(client, epoch));
    }
    let (width, height) = ratatui::crossterm::terminal::size().unwrap_or((80, 24));
    print!("{}", view::text(&h.model(url), width.max(80), height.max(24)));
    if matches!(h.last, Some(Err(_))) { ExitCode::from(EXIT_FAILED) } else { ExitCode::from(EXIT_OK) }
}

fn live(url: &str, client: Client, interval: Duration) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let (tx, rx) = mpsc::channel();
    let epoch = Instant::now();
    std::thread::Builder::new().name("top-fetch".into()).spawn(move || {
        loop {
            let started = Instant::now();
            if tx.send(fetch(&client, epoch)).is_err() {
                return;
            }
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    })?;
    let mut terminal = ratatui::init();
    let mut h = History::default();
    let mut details = false;
    let result = (|| -> std::io::Result<()> {
        loop {
            while let Ok(r) = rx.try_recv() {
                h.push(r);
            }
            terminal.draw(|f| view::draw(f, &h.model(url), details))?;
            if event::poll(Duration::from_millis(200))?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                    return Ok(());
                }
                if k.code == KeyCode::Char('d') {
                    details = !details;
                }
            }
        }
    })();
    ratatui::restore();
    result
}
