//! `remote-vm-daemon top` against a daemon in the unpatched VM during a known
//! stall: `--once`, then the live view in tmux (a private server, 80×24,
//! `capture-pane`), then the daemon going away, then `q`. The screen must name
//! the reader, the target and the holder the guest's workload says it made.
//! The screens are kept in `target/top-test/screen*.txt`.
use std::{
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use remote_vm_common::{Interface, classify::HolderKind};

use crate::{util::say, vm};

/// The guest daemon's basic auth user for this test (`rvm.serve_auth`).
const TOP_USER: &str = "top";
const TOP_PASSWORD: &str = "top-test-password";

/// The tmux server of this test only (`tmux -L`), never the user's.
const TMUX_SOCKET: &str = "remote-vm-top-test";
const SESSION: &str = "top";

fn tmux(args: &[&str]) -> Result<std::process::Output> {
    Command::new("tmux").arg("-L").arg(TMUX_SOCKET).args(args).output().context("run tmux (install tmux)")
}

fn capture() -> Result<String> {
    let out = tmux(&["capture-pane", "-p", "-t", SESSION])?;
    ensure!(out.status.success(), "tmux capture-pane: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls the pane until it shows `want` (or `timeout`); the last screen either way.
fn wait_screen(want: &str, timeout: Duration) -> Result<(bool, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let screen = capture()?;
        if screen.contains(want) || Instant::now() > deadline {
            return Ok((screen.contains(want), screen));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `vmtest: stall-truth reader=PID/TID:COMM target=PID:COMM holder=TID:COMM
/// doing=SYSCALL:LENGTH:ADDRESS` as the line `top` must show for that wait, and
/// the end of the details key's line for what the holder is doing.
fn expected_line(console: &str) -> Result<(String, (String, String))> {
    let truth = console
        .lines()
        .filter_map(|l| l.strip_prefix("vmtest: stall-truth "))
        .next_back()
        .context("no stall-truth line on the console")?;
    let field = |k: &str| -> Result<&str> {
        truth.split_whitespace().find_map(|f| f.strip_prefix(k)).with_context(|| format!("{k} in {truth:?}"))
    };
    let (reader, reader_comm) = field("reader=")?.split_once(':').context("reader")?;
    let (target, target_comm) = field("target=")?.split_once(':').context("target")?;
    let (holder, holder_comm) = field("holder=")?.split_once(':').context("holder")?;
    let mut doing = field("doing=")?.split(':');
    let (syscall, length, address) = (doing.next().context("doing")?, doing.next().context("doing's length")?, doing.next().context("doing's address")?);
    let length = remote_vm_common::user::human_bytes(length.parse().context("doing's length")?);
    let (writer, cmdline) = (HolderKind::Writer.label(), Interface::Cmdline.label());
    // The line in 80 columns: who waits for whom; what the holder does
    // follows it as far as the width goes, and whole behind the details key:
    // `  doing syscall NAME (nr N) ADDRESS + LENGTH`.
    Ok((
        format!("{reader_comm} {reader} → {target_comm} {target} ← {writer} {holder_comm} {holder} [{cmdline}]"),
        (format!("  doing syscall {syscall} (nr "), format!(") {address} + {length}")),
    ))
}

pub fn run(root: &Path) -> Result<()> {
    let Some(kernel) = vm::shared_kernels(root).into_iter().find(|k| k.expect == "unpatched") else {
        say!("top-test: skipped (it needs the shared unpatched 6.12 kernel)");
        return Ok(());
    };
    let dir = root.join("target/top-test");
    std::fs::create_dir_all(&dir)?;
    let initramfs = dir.join("initramfs.cpio");
    vm::write_test_initramfs(root, &initramfs)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let bin = root.join("target/release/remote-vm-daemon");
    // /stalls over TCP needs authentication: the guest's daemon takes basic
    // auth for this user, and top on this side the password from a file.
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{TOP_PASSWORD}\n"))?;
    let params = format!("rvm.serve_workload=stall rvm.stall_hold_ms=8000 rvm.serve_auth={TOP_USER}:{TOP_PASSWORD}");
    let mut guest = vm::ServingVm::start(&kernel, &initramfs, &dir, port, &params)?;
    guest.wait_serving(Duration::from_secs(300))?;
    guest.wait_for("vmtest: stall-waiting", Duration::from_secs(300))?;
    let (want, details) = expected_line(&std::fs::read_to_string(&guest.console)?)?;
    say!("top-test: the guest's reader is waiting: {want}");

    // In the guest, `top` with no flags reads the daemon's Unix socket.
    guest.wait_for("vmtest: top-socket-exit", Duration::from_secs(30))?;
    let console = std::fs::read_to_string(&guest.console)?;
    let frame: Vec<&str> = console.lines().filter_map(|l| l.trim_end_matches('\r').split("vmtest: top-socket| ").nth(1)).collect();
    ensure!(console.contains("vmtest: top-socket-exit 0"), "top --once in the guest (its Unix socket) did not exit 0:\n{}", frame.join("\n"));
    ensure!(frame.iter().any(|l| l.contains(&want)), "top --once in the guest (its Unix socket) does not show {want:?}:\n{}", frame.join("\n"));
    say!("top-test: in the guest, top with no flags reads the Unix socket and names reader, target and holder");

    // --once over TCP with basic auth: one frame on stdout, exit 0.
    let auth: Vec<String> = vec!["--basic-auth-user".into(), TOP_USER.into(), "--basic-auth-password-file".into(), password_file.display().to_string()];
    let once = Command::new(&bin).args(["top", "--once", "--url", &url]).args(&auth).output()?;
    let frame = String::from_utf8_lossy(&once.stdout);
    ensure!(once.status.success(), "top --once exited {}: {frame}", once.status);
    ensure!(frame.contains(&want), "top --once does not show {want:?}:\n{frame}");
    ensure!(frame.contains("waiting now: 1 "), "top --once does not count one waiter:\n{frame}");

    // The live view in an 80×24 tmux pane.
    let _ = tmux(&["kill-server"]);
    let command = format!("{} top --url {url} {}", bin.display(), auth.join(" "));
    let out = tmux(&["new-session", "-d", "-s", SESSION, "-x", "80", "-y", "24", &command])?;
    ensure!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
    let result = (|| -> Result<()> {
        let (ok, screen) = wait_screen(&want, Duration::from_secs(5))?;
        ensure!(ok, "the live view does not show {want:?}:\n{screen}");
        // A second poll gives the rates; the wait must still be named.
        let (ok, screen) = wait_screen("(over ", Duration::from_secs(5))?;
        std::fs::write(dir.join("screen.txt"), &screen)?;
        ensure!(ok && screen.contains(&want), "no rates, or the wait is gone, after two polls:\n{screen}");
        ensure!(screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80), "larger than 80×24:\n{screen}");
        say!("top-test: the live view names reader, target and holder");
        // d: the oldest wait whole, the holder's range included; d again: back.
        tmux(&["send-keys", "-t", SESSION, "d"])?;
        let (ok, screen) = wait_screen(&details.1, Duration::from_secs(5))?;
        std::fs::write(dir.join("screen-details.txt"), &screen)?;
        ensure!(ok && screen.contains(&details.0), "d does not show the holder's system call and range {details:?}:\n{screen}");
        tmux(&["send-keys", "-t", SESSION, "d"])?;
        let (ok, screen) = wait_screen("q quit · d details", Duration::from_secs(5))?;
        ensure!(ok, "d again does not go back:\n{screen}");
        say!("top-test: d shows what the holder is doing, over which range");
        // The daemon goes away: shown as such, no crash.
        drop(guest);
        let (ok, screen) = wait_screen("daemon unreachable", Duration::from_secs(10))?;
        std::fs::write(dir.join("screen-unreachable.txt"), &screen)?;
        ensure!(ok, "a daemon that went away is not shown as such:\n{screen}");
        say!("top-test: a daemon that went away is shown as such");
        // q quits.
        tmux(&["send-keys", "-t", SESSION, "q"])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while tmux(&["has-session", "-t", SESSION])?.status.success() {
            if Instant::now() > deadline {
                bail!("top did not quit on q:\n{}", capture().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        say!("top-test: q quits");
        Ok(())
    })();
    let _ = tmux(&["kill-server"]);
    result
}
