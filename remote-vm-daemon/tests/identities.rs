//! Who may see identities: `/stalls` names which process reads which other
//! process's memory, with cgroup paths. By default it is served on the Unix
//! socket (its permissions decide) and over TCP only to requests that
//! authenticated; `[stalls] serve` says otherwise. A user who may not open
//! the socket gets nothing from it. Host tests: root and BPF, under `cargo
//! xtask test`.
use std::process::Command;

mod common;

use common::{DAEMON, Running};
use remote_vm_testkit::prom;

const FORBIDDEN_TCP: &str = "/stalls names which process reads which, with cgroup paths: served on the Unix socket";

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn by_default_stalls_are_on_the_socket_and_not_over_plain_tcp() {
    // 1360921 served /stalls to anyone who reached the port.
    let d = Running::start("ident-default", "", &[]);
    let (status, body) = prom::get(&d.addr, "/stalls").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.starts_with(FORBIDDEN_TCP) && body.contains(&d.socket.display().to_string()), "{body}");
    assert!(body.contains("[stalls] serve = \"authenticated\""), "{body}");
    // Everything else over TCP as before.
    assert_eq!(prom::get(&d.addr, "/metrics").unwrap().0, 200);
    assert_eq!(prom::get(&d.addr, "/healthz").unwrap().0, 200);
    // On the socket: the page, and the rest.
    let (status, body) = prom::get(&d.socket_url(), "/stalls").unwrap();
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(page["recent"].is_array() && page["dropped"].is_u64(), "{body}");
    assert_eq!(prom::get(&d.socket_url(), "/metrics").unwrap().0, 200);
    // The socket is 0660: a user outside its group cannot open it.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777, 0o660);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", DAEMON, "top", "--once", "--url"])
        .arg(d.socket_url())
        .output()
        .expect("setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("daemon unreachable, retrying (below: the last answer): cannot connect: Permissio"), "{text}");
    assert!(!text.contains("recent stalls (≥"), "{text}");
    assert_eq!(d.stop(), 0);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn over_tcp_an_authenticated_request_gets_stalls_unless_serve_says_socket() {
    let dir = std::env::temp_dir().join(format!("rvm-ident-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yml = dir.join("web.yml");
    std::fs::write(&yml, format!("basic_auth_users:\n  alice: '{}'\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    let with_auth = |name: &str, config: &str| Running::spawn(name, config, &[], &["--web.config.file", yml.to_str().unwrap()]);
    let client = |d: &Running, user: Option<&str>| {
        let options = remote_vm_prom::Options {
            auth: user.map(|u| remote_vm_prom::Auth::Basic { user: u.into(), password: "pw".into() }),
            ..Default::default()
        };
        remote_vm_prom::Client::with_options(&d.addr, options).unwrap()
    };
    let mut d = with_auth("ident-auth", "");
    d.wait_ready(|a| matches!(prom::get(a, "/healthz"), Ok((401, _))));
    assert_eq!(client(&d, Some("alice")).get("/stalls").unwrap().0, 200);
    assert_eq!(client(&d, None).get("/stalls").unwrap().0, 401);
    // On the socket, no password is asked: its permissions are the authentication.
    assert_eq!(prom::get(&d.socket_url(), "/stalls").unwrap().0, 200);
    // top over TCP with the password from a file shows the stalls.
    let out = Command::new(DAEMON)
        .args(["top", "--once", "--interval", "0.2", "--url", &d.addr, "--basic-auth-user", "alice", "--basic-auth-password-file"])
        .arg(&pw)
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    assert!(screen.contains("recent stalls (≥ 100.0 ms)"), "{screen}");
    assert_eq!(d.stop(), 0);
    // serve = "socket": not over TCP, authenticated or not.
    let mut d = with_auth("ident-socket", "[stalls]\nserve = \"socket\"\n");
    d.wait_ready(|a| matches!(prom::get(a, "/healthz"), Ok((401, _))));
    let (status, body) = client(&d, Some("alice")).get("/stalls").unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("only ([stalls] serve = \"socket\")"), "{body}");
    assert_eq!(prom::get(&d.socket_url(), "/stalls").unwrap().0, 200);
    assert_eq!(d.stop(), 0);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask test"]
fn everyone_and_off_are_explicit() {
    let d = Running::start("ident-everyone", "[stalls]\nserve = \"everyone\"\n", &[]);
    assert_eq!(prom::get(&d.addr, "/stalls").unwrap().0, 200);
    assert_eq!(d.stop(), 0);
    let d = Running::start("ident-off", "[stalls]\nserve = \"off\"\n", &[]);
    assert_eq!(prom::get(&d.addr, "/stalls").unwrap().0, 404);
    assert_eq!(prom::get(&d.socket_url(), "/stalls").unwrap().0, 404);
    // No socket at all: only TCP, and /stalls there only when authenticated.
    let d = Running::start_with("ident-nosocket", "", &[], &["--web.socket", ""]);
    let (status, body) = prom::get(&d.addr, "/stalls").unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("on no Unix socket (web.socket is empty)"), "{body}");
    assert_eq!(d.stop(), 0);
}
