//! Drawing a `Model` with ratatui; made for 80×24 and wider.
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph},
};
use remote_vm_common::classify::Path;

use super::model::Model;

fn secs(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0} s")
    } else if v >= 1.0 {
        format!("{v:.1} s")
    } else if v >= 0.001 {
        format!("{:.1} ms", v * 1e3)
    } else {
        format!("{:.0} µs", v * 1e6)
    }
}

fn rate(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// The header lines: who is shown, whether it answers, the rates.
fn header(m: &Model) -> Vec<Line<'static>> {
    let kernel = m
        .kernel
        .as_ref()
        .map_or(String::new(), |(release, patched, series)| match (patched.as_str(), series.as_str()) {
            // Which version of the series a patched kernel runs.
            ("yes", s) if !s.is_empty() => format!(" · Linux {release} patched={patched} ({s})"),
            _ => format!(" · Linux {release} patched={patched}"),
        });
    let mut lines = vec![Line::from(vec![
        Span::styled("remote-vm top", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" · {}{kernel}", m.url)),
    ])];
    if let Err(why) = &m.reachable {
        // The URL is in the title already: keep what failed.
        let why = why.rsplit_once("/metrics: ").map_or(why.as_str(), |(_, rest)| rest);
        lines.push(Line::styled(
            format!("daemon unreachable, retrying (below: the last answer): {why}"),
            Style::default().add_modifier(Modifier::REVERSED),
        ));
    }
    let Some(dt) = m.interval else {
        lines.push(Line::raw("reads/s: waiting for a second scrape…"));
        return lines;
    };
    lines.push(Line::raw(match &m.reads {
        Some(r) => {
            let by_path: Vec<String> = Path::ALL.iter().zip(r.per_second).map(|(p, v)| format!("{} {}", p.label(), rate(v))).collect();
            let share = r.fast_share.map_or("–".to_string(), |s| format!("{:.1} %", s * 100.0));
            format!("reads/s: {}  ·  fast path {share}  (over {dt:.1} s)", by_path.join("  "))
        }
        None => "reads/s: not exported by this daemon (see its /healthz)".to_string(),
    }));
    if !m.fallbacks.is_empty() {
        // The reasons seen in the interval, most first (all four do not fit in 80 columns).
        let mut seen: Vec<&(&str, f64)> = m.fallbacks.iter().filter(|(_, v)| *v > 0.0).collect();
        seen.sort_by(|a, b| b.1.total_cmp(&a.1));
        let parts: Vec<String> = seen.iter().map(|(r, v)| format!("{r} {}", rate(*v))).collect();
        let text = if parts.is_empty() { "none".to_string() } else { parts.join("  ") };
        lines.push(Line::raw(format!("fallbacks/s: {text}")));
    }
    let p99 = m.wait_p99.map_or("no wait".to_string(), secs);
    let stalls = m.stalls_per_second.map_or("–".to_string(), rate);
    lines.push(Line::raw(format!("remote wait p99: {p99}  ·  stalls/s: {stalls}")));
    lines
}

/// The oldest wait in progress, else the newest stall: what the details key shows.
fn detailed(m: &Model) -> Option<(&'static str, &crate::top::model::Wait)> {
    let page = m.stalls.as_ref()?;
    match page.in_progress.as_ref().and_then(|l| l.first()) {
        Some(w) => Some(("the oldest wait in progress", w)),
        None => page.recent.first().map(|s| ("the newest stall", s)),
    }
}

/// `details`: the lower pane shows the whole observation of the oldest wait
/// in progress (else of the newest stall) instead of the recent stalls.
pub fn draw(f: &mut Frame, m: &Model, details: bool) {
    let head = header(m);
    let [top, waits, recent, foot] = Layout::vertical([
        Constraint::Length(head.len() as u16),
        Constraint::Min(4),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(head), top);

    let now_title = match m.waiting {
        Some((n, oldest)) if n > 0.0 => format!(" waiting now: {n:.0} (oldest {}) ", secs(oldest)),
        Some(_) => " waiting now: none ".to_string(),
        None => " waiting now: not visible (see the daemon's /healthz) ".to_string(),
    };
    let in_progress: Vec<Line> = match m.stalls.as_ref().and_then(|s| s.in_progress.as_ref()) {
        Some(list) => list
            .iter()
            .map(|w| Line::raw(format!("{:>7}  {}", secs(w.waiting_seconds), w.line())))
            .collect(),
        None => Vec::new(),
    };
    f.render_widget(
        Paragraph::new(in_progress).block(Block::default().borders(Borders::TOP).title(now_title)),
        waits,
    );

    let (title, lines) = match &m.stalls {
        Some(page) => (
            format!(" recent stalls (≥ {}) ", secs(page.threshold_seconds)),
            page.recent
                .iter()
                .map(|s| {
                    let when = s.ended.get(11..19).unwrap_or("");
                    Line::raw(format!("{when} {:>7}  {}", secs(s.waited_seconds), s.line()))
                })
                .collect(),
        ),
        None => (
            match m.stalls_status {
                Some(403) => " recent stalls: not served to this client (use the Unix socket, or authenticate) ",
                Some(404) => " recent stalls: /stalls off ([stalls] serve = \"off\") ",
                _ => " recent stalls: /stalls not served ",
            }
            .to_string(),
            Vec::new(),
        ),
    };
    let (title, lines) = match (details, detailed(m)) {
        (true, Some((which, w))) => (format!(" details: {which} "), w.details().into_iter().map(Line::raw).collect()),
        (true, None) => (" details: nothing waiting, no stall yet ".to_string(), Vec::new()),
        (false, _) => (title, lines),
    };
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(title)), recent);
    let keys = if details { "q quit · d back to the recent stalls" } else { "q quit · d details" };
    f.render_widget(Paragraph::new(Line::raw(keys)), foot);
}

/// One frame as plain text (`--once`): `width` × `height` cells, trailing
/// blanks trimmed.
pub fn text(m: &Model, width: u16, height: u16) -> String {
    let mut terminal = match ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(e) => return format!("cannot draw: {e}\n"),
    };
    if let Err(e) = terminal.draw(|f| draw(f, m, false)) {
        return format!("cannot draw: {e}\n");
    }
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..height {
        let mut line = String::new();
        for x in 0..width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::{Holder, Reads, StallsPage, Wait, Who};

    fn model() -> Model {
        let wait = Wait {
            reader: Who { pid: 41, tid: 51, comm: "rd-cmdline".into() },
            target: Who { pid: 49, tid: 0, comm: "rvm-testkit".into() },
            holder: Holder { kind: "writer".into(), pid: 49, tid: 50, comm: "holder".into(), exact: true, ..Holder::default() },
            interface: "cmdline".into(),
            waiting_seconds: 2.4,
            waited_seconds: 6.1,
            ended: "2026-11-25T23:16:58.782Z".into(),
            ..Wait::default()
        };
        Model {
            url: "http://127.0.0.1:19361".into(),
            reachable: Ok(()),
            kernel: Some(("6.12.117".into(), "no".into(), "none".into())),
            interval: Some(1.0),
            reads: Some(Reads { per_second: [0.0, 0.0, 12.0], fast_share: Some(0.0) }),
            fallbacks: vec![("vma_lock_failed", 0.0), ("vma_unsuitable", 2.0), ("other", 0.5)],
            wait_p99: Some(0.8),
            stalls_per_second: Some(0.0),
            waiting: Some((1.0, 2.4)),
            stalls: Some(StallsPage {
                threshold_seconds: 0.1,
                in_progress: Some(vec![wait.clone()]),
                recent: vec![wait],
                dropped: 0,
            }),
            stalls_status: Some(200),
        }
    }

    #[test]
    fn the_screen_names_reader_target_and_holder_in_80_by_24() {
        let screen = text(&model(), 80, 24);
        assert_eq!(screen.lines().count(), 24);
        assert!(screen.lines().all(|l| l.chars().count() <= 80));
        let has = |s: &str| screen.contains(s);
        assert!(has("reads/s: fast 0.0  fallback 0.0  slow 12.0  ·  fast path 0.0 %"), "{screen}");
        assert!(has("remote wait p99: 800.0 ms"), "{screen}");
        assert!(has("fallbacks/s: vma_unsuitable 2.0  other 0.5\n"), "{screen}");
        assert!(has("waiting now: 1 (oldest 2.4 s)"), "{screen}");
        assert!(has("  2.4 s  rd-cmdline 41/51 → rvm-testkit 49 ← writer holder 50 [cmdline]"), "{screen}");
        assert!(has("23:16:58   6.1 s  rd-cmdline 41/51 → rvm-testkit 49 ← writer holder 50 [cmdline]"), "{screen}");
        assert!(has("q quit · d details"), "{screen}");
        assert!(has("Linux 6.12.117 patched=no\n"), "{screen}");
        // A patched kernel says which version of the series it runs.
        let v2 = Model { kernel: Some(("7.3.4".into(), "yes".into(), "v2".into())), ..model() };
        assert!(text(&v2, 80, 24).contains("Linux 7.3.4 patched=yes (v2)"));
    }

    #[test]
    fn the_details_key_shows_the_oldest_wait_whole() {
        let mut m = model();
        let w = &mut m.stalls.as_mut().unwrap().in_progress.as_mut().unwrap()[0];
        w.holder.op = "mprotect".into();
        w.holder.doing = Some(crate::top::model::Doing {
            what: "syscall".into(),
            syscall: Some("mprotect".into()),
            nr: Some(10),
            range: Some(crate::top::model::Range { address: "0x7f0000000000".into(), length: 1 << 30 }),
        });
        let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, &m, true)).unwrap();
        let screen: String = (0..24)
            .map(|y| (0..80).map(|x| terminal.backend().buffer()[(x, y)].symbol().to_string()).collect::<String>().trim_end().to_string() + "\n")
            .collect();
        assert!(screen.contains("details: the oldest wait in progress"), "{screen}");
        assert!(screen.contains("holder  writer holder pid 49 tid 50 · op mprotect"), "{screen}");
        assert!(screen.contains("  doing syscall mprotect (nr 10) 0x7f0000000000 + 1.0 GiB"), "{screen}");
        assert!(screen.contains("q quit · d back to the recent stalls"), "{screen}");
    }

    #[test]
    fn a_daemon_that_went_away_is_shown_as_such() {
        let mut m = model();
        m.reachable = Err("GET http://127.0.0.1:19361/metrics: cannot connect: Connection refused".into());
        let screen = text(&m, 80, 24);
        assert!(screen.contains("daemon unreachable, retrying (below: the last answer): cannot connect"), "{screen}");
        // Nothing fetched yet and nothing reachable: still a screen.
        let m = Model::new("http://x", None, None, Err("connection refused".into()));
        let screen = text(&m, 80, 24);
        assert!(screen.contains("daemon unreachable") && screen.contains("q quit"), "{screen}");
    }

    #[test]
    fn absent_families_say_so() {
        let mut m = model();
        m.reads = None;
        m.waiting = None;
        m.stalls = None;
        m.stalls_status = None;
        let screen = text(&m, 80, 24);
        assert!(screen.contains("reads/s: not exported by this daemon"), "{screen}");
        assert!(screen.contains("waiting now: not visible"), "{screen}");
        assert!(screen.contains("/stalls not served"), "{screen}");
        m.stalls_status = Some(403);
        assert!(text(&m, 100, 24).contains("recent stalls: not served to this client (use the Unix socket, or authenticate)"));
        m.stalls_status = Some(404);
        assert!(text(&m, 100, 24).contains("recent stalls: /stalls off"));
    }
}
