//! The client against tiny fake servers on loopback (ephemeral ports).
use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use remote_vm_prom::{Auth, Client, Error, Options, Prometheus, Scrape};

/// Serves `answers` one connection each on `bind` (port 0); sends each request's
/// head back over the channel.
fn serve(bind: &str, answers: Vec<Vec<u8>>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for answer in answers {
            let Ok((mut s, _)) = listener.accept() else { return };
            let head = read_head(&mut s);
            let _ = tx.send(head);
            let _ = s.write_all(&answer);
        }
    });
    (addr, rx)
}

fn read_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn answer(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn gets_status_and_body_over_ipv4_and_ipv6() {
    let (addr, rx) = serve("127.0.0.1:0", vec![answer("200 OK", "text/plain", "ok\n"), answer("404 Not Found", "text/plain", "nope")]);
    assert_eq!(remote_vm_prom::get(&addr, "/healthz").unwrap(), (200, "ok\n".to_string()));
    let head = rx.recv().unwrap();
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("authorization"), "{head}");
    // Any status is an answer.
    assert_eq!(Client::new(&format!("http://{addr}")).unwrap().get("/nope").unwrap().0, 404);

    let Ok(v6) = TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    drop(v6);
    let (addr, rx) = serve("[::1]:0", vec![answer("200 OK", "text/plain", "six")]);
    assert!(addr.starts_with("[::1]:"));
    let c = Client::new(&format!("http://{addr}/")).unwrap();
    assert_eq!(c.get("/x").unwrap(), (200, "six".to_string()));
    let head = rx.recv().unwrap().to_ascii_lowercase();
    assert!(head.contains(&format!("host: {addr}")), "{head}");
}

#[test]
fn sends_basic_auth_and_bearer_tokens() {
    let (addr, rx) = serve("127.0.0.1:0", vec![answer("200 OK", "text/plain", ""); 3]);
    Client::new(&format!("http://al:s%40cret@{addr}")).unwrap().get("/").unwrap();
    let head = rx.recv().unwrap();
    // base64("al:s@cret")
    assert!(head.contains("Basic YWw6c0BjcmV0\r\n"), "{head}");
    let bearer = Options {
        auth: Some(Auth::Bearer("t0ken".into())),
        ..Options::default()
    };
    Client::with_options(&addr, bearer).unwrap().get("/").unwrap();
    assert!(rx.recv().unwrap().contains("Bearer t0ken"));
    let basic = Options {
        auth: Some(Auth::Basic {
            user: "u".into(),
            password: "p".into(),
        }),
        ..Options::default()
    };
    Client::with_options(&addr, basic).unwrap().get("/").unwrap();
    assert!(rx.recv().unwrap().contains("Basic dTpw\r\n"));
}

#[test]
fn caps_the_answer_size() {
    let big = "x".repeat(10_000);
    let (addr, _rx) = serve("127.0.0.1:0", vec![answer("200 OK", "text/plain", &big)]);
    let small = Options {
        max_body: 1000,
        ..Options::default()
    };
    let e = Client::with_options(&addr, small).unwrap().get("/metrics").unwrap_err();
    assert!(matches!(e, Error::TooLarge { limit: 1000, .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("http://{addr}/metrics")), "{e}");
}

#[test]
fn a_stalled_server_hits_the_deadline() {
    // Accepts, reads the request, then sends a header and stalls.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            read_head(&mut s);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc");
            thread::sleep(Duration::from_secs(5));
        }
    });
    let quick = Options {
        timeout: Duration::from_millis(500),
        ..Options::default()
    };
    let t = Instant::now();
    let e = Client::with_options(&addr, quick).unwrap().get("/slow").unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("/slow"), "{e}");
}

#[test]
fn refused_connections_name_the_url() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = remote_vm_prom::get(&format!("127.0.0.1:{port}"), "/metrics").unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("GET http://127.0.0.1:{port}/metrics: cannot connect")), "{e}");
}

#[test]
fn https_to_a_plain_server_is_an_error_naming_the_url() {
    // Answers the ClientHello in plain HTTP.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.read(&mut [0u8; 512]);
            let _ = s.write_all(&answer("400 Bad Request", "text/plain", "not tls"));
        }
    });
    // The handshake fails whatever the system's roots are.
    let e = Client::new(&format!("https://127.0.0.1:{port}")).unwrap().get("/x").unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("GET https://127.0.0.1:{port}/x: TLS: ")), "{e}");
}

#[test]
fn prometheus_api_calls() {
    let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"a"},"value":[1,"2"]}]}}"#;
    let labels = r#"{"status":"success","data":["yes","no"]}"#;
    let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
    let rules = r#"{"status":"success","data":{"groups":[{"name":"g","rules":[]}]}}"#;
    let (addr, rx) = serve(
        "127.0.0.1:0",
        vec![
            answer("200 OK", "application/json", ok),
            answer("200 OK", "application/json", labels),
            answer("400 Bad Request", "application/json", bad),
            answer("502 Bad Gateway", "text/html", "<html>proxy</html>"),
            answer("200 OK", "text/plain", "not json"),
            answer("200 OK", "application/json", rules),
        ],
    );
    let p = Prometheus::new(Client::new(&format!("http://{addr}/prom/")).unwrap());
    let r = p.query("up{job=\"a\"}", Some(1700000000.5)).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["metric"]["job"], "a");
    let head = rx.recv().unwrap();
    assert!(
        head.starts_with("GET /prom/api/v1/query?query=up%7Bjob%3D%22a%22%7D&time=1700000000.500 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("accept: application/json"), "{head}");

    assert_eq!(p.label_values("patched", &["some_info"]).unwrap(), vec!["yes", "no"]);
    let head = rx.recv().unwrap();
    assert!(head.starts_with("GET /prom/api/v1/label/patched/values?match[]=some_info HTTP/1.1"), "{head}");

    let e = p.query("up{", None).unwrap_err();
    assert!(matches!(e, Error::Api { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("Prometheus query up{{ failed (http://{addr}/prom/api/v1/query?query=up%7B): HTTP 400: bad_data: parse error at char 3")
    );
    let e = p.query("up", None).unwrap_err();
    assert!(matches!(e, Error::Status { status: 502, .. }), "{e:?}");
    let e = p.query("up", None).unwrap_err();
    assert!(matches!(e, Error::Json { .. }), "{e:?}");
    assert_eq!(p.rules().unwrap()["groups"][0]["name"], "g");
}

#[test]
fn scrapes_metrics() {
    let text = "# HELP a_total A\n# TYPE a_total counter\na_total{y=\"2\",x=\"1\"} 7\n";
    let (addr, _rx) = serve("127.0.0.1:0", vec![answer("200 OK", "text/plain", text), answer("503 Service Unavailable", "text/plain", "down")]);
    let s = Scrape::fetch(&addr).unwrap();
    assert_eq!(s.value("a_total", &[("x", "1"), ("y", "2")]), Some(7.0));
    let e = Scrape::fetch(&addr).unwrap_err();
    assert!(matches!(e, Error::Status { status: 503, .. }), "{e:?}");
    assert!(e.to_string().contains("/metrics: HTTP 503: down"), "{e}");
    assert!(Scrape::parse("x{a=\"1\" 2\n").is_err());
}

/// Serves `answers` one connection each on a Unix socket; sends each
/// request's head back over the channel. `None`: accept and say nothing.
fn serve_unix(answers: Vec<Option<Vec<u8>>>) -> (String, mpsc::Receiver<String>) {
    use std::os::unix::net::UnixListener;
    let dir = std::env::temp_dir().join(format!("rvm-prom-unix-{}-{}", std::process::id(), answers.len()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for answer in answers {
            let Ok((mut s, _)) = listener.accept() else { return };
            let _ = tx.send(read_head(&mut s));
            match answer {
                Some(a) => {
                    let _ = s.write_all(&a);
                }
                // Held open, silent, while the next connections are served.
                None => {
                    thread::spawn(move || {
                        thread::sleep(Duration::from_secs(5));
                        drop(s);
                    });
                }
            }
        }
    });
    (format!("unix:{}", path.display()), rx)
}

#[test]
fn gets_over_a_unix_socket_with_the_same_limits() {
    let big = "x".repeat(2000);
    let (url, rx) = serve_unix(vec![
        Some(answer("200 OK", "application/json", "{\"recent\":[]}\n")),
        Some(answer("403 Forbidden", "text/plain", "not for you\n")),
        Some(answer("200 OK", "text/plain", &big)),
        None,
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec()),
    ]);
    let options = Options {
        auth: Some(Auth::Basic { user: "alice".into(), password: "pw".into() }),
        max_body: 1000,
        timeout: Duration::from_millis(500),
        ..Options::default()
    };
    let c = Client::with_options(&url, options).unwrap();
    assert_eq!(c.get("/stalls").unwrap(), (200, "{\"recent\":[]}\n".to_string()));
    let head = rx.recv().unwrap();
    assert!(head.starts_with("GET /stalls HTTP/1.1\r\nHost: localhost\r\n"), "{head}");
    assert!(head.contains("Authorization: Basic YWxpY2U6cHc=\r\n"), "{head}");
    assert_eq!(c.get("/stalls").unwrap().0, 403);
    let path = url.strip_prefix("unix:").unwrap();
    match c.get("/metrics") {
        Err(Error::TooLarge { url, limit }) => assert_eq!((url.as_str(), limit), (format!("unix:{path}:/metrics").as_str(), 1000)),
        other => panic!("{other:?}"),
    }
    let t = Instant::now();
    assert!(matches!(c.get("/metrics"), Err(Error::Timeout { .. })));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let e = c.get("/metrics").unwrap_err().to_string();
    assert!(e.contains("the answer ended after 5 of 10 bytes"), "{e}");
    // No socket there, and not a path.
    let e = remote_vm_prom::get("unix:/nonexistent/remote-vm.sock", "/metrics").unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().starts_with("GET unix:/nonexistent/remote-vm.sock:/metrics: cannot connect: No such file"), "{e}");
    assert!(matches!(Client::new("unix:relative.sock"), Err(Error::Url { .. })));
    assert_eq!(Client::new("unix:///run/x.sock").unwrap().base(), "unix:/run/x.sock");
}
