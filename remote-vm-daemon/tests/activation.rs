//! Socket activation without systemd: the test plays systemd's part, holding
//! a TCP listener and a Unix socket and passing them to the daemon as
//! `LISTEN_FDS` (descriptors 3 and 4, `LISTEN_PID` its own). The passed sockets
//! win over `web.listen_address` and `web.socket`, which are not bound (a line
//! says so); while no daemon runs the sockets stay taken, a user's own
//! listener on the port fails, and a connection made then is served by the
//! next daemon. Host tests: root and BPF, under `cargo xtask test`.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, RawFd},
        unix::{net::UnixListener, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{DAEMON, free_port};
use remote_vm_testkit::prom;

/// The daemon with `tcp` and `unix` as descriptors 3 and 4 and systemd's
/// variables naming them; its log in `log`.
fn activated(tcp: RawFd, unix: RawFd, log: &Path, flags: &[&str]) -> Child {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=2 exec \"$0\" \"$@\"", DAEMON, "run"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first, in case either is 3 or 4 already; dup2
            // leaves the copies without close-on-exec.
            let (a, b) = (libc::fcntl(tcp, libc::F_DUPFD, 100), libc::fcntl(unix, libc::F_DUPFD, 100));
            if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn wait_log(log: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Held {
    tcp: TcpListener,
    unix: UnixListener,
    path: PathBuf,
    dir: PathBuf,
}

fn hold(name: &str) -> Held {
    let dir = std::env::temp_dir().join(format!("rvm-activation-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("act.sock");
    Held { tcp: TcpListener::bind("127.0.0.1:0").unwrap(), unix: UnixListener::bind(&path).unwrap(), path, dir }
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn passed_sockets_are_served_and_the_configured_ones_are_not_bound() {
    let h = hold("served");
    let addr = h.tcp.local_addr().unwrap().to_string();
    let other = format!("127.0.0.1:{}", free_port());
    let own_socket = h.dir.join("own.sock");
    let log = h.dir.join("daemon.log");
    let mut d = activated(h.tcp.as_raw_fd(), h.unix.as_raw_fd(), &log, &["--listen", &other, "--web.socket", own_socket.to_str().unwrap()]);
    let text = wait_log(&log, "(sockets from systemd)");
    assert!(
        text.contains(&format!("serving http://{addr}/metrics, unix:{} (sockets from systemd)", h.path.display())),
        "{text}"
    );
    assert!(text.contains(&format!("web.listen_address {other} not bound (ListenStream= in remote-vm.socket decides)")), "{text}");
    assert!(text.contains(&format!("web.socket {} not made: systemd passed {}", own_socket.display(), h.path.display())), "{text}");
    assert_eq!(prom::get(&addr, "/metrics").unwrap().0, 200);
    assert_eq!(prom::get(&format!("unix:{}", h.path.display()), "/stalls").unwrap().0, 200);
    assert!(TcpStream::connect(&other).is_err(), "{other} was bound");
    assert!(!own_socket.exists());
    // SIGTERM: the passed socket's file is systemd's, left in place.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert_eq!(d.wait().unwrap().code(), Some(0));
    assert!(h.path.exists());
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn while_no_daemon_runs_the_port_stays_taken_and_a_waiting_scrape_is_served_by_the_next() {
    let h = hold("restart");
    let addr = h.tcp.local_addr().unwrap().to_string();
    let log = h.dir.join("first.log");
    let mut first = activated(h.tcp.as_raw_fd(), h.unix.as_raw_fd(), &log, &[]);
    wait_log(&log, "(sockets from systemd)");
    assert_eq!(prom::get(&addr, "/healthz").unwrap().0, 200);
    first.kill().unwrap();
    first.wait().unwrap();
    // No daemon: a user's own listener on the port fails...
    let squat = TcpListener::bind(&addr);
    assert_eq!(squat.err().map(|e| e.kind()), Some(std::io::ErrorKind::AddrInUse));
    // ... and a scrape that connects now waits in the backlog.
    let mut waiting = TcpStream::connect(&addr).unwrap();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let log = h.dir.join("second.log");
    let mut second = activated(h.tcp.as_raw_fd(), h.unix.as_raw_fd(), &log, &[]);
    waiting.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    second.kill().unwrap();
    second.wait().unwrap();
}
