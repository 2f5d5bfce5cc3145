//! A hostile Prometheus cannot make `compare` use more than its documented
//! memory: an answer of 30 million samples (240 MB of JSON) is read as it
//! streams and refused where it passes 10 million samples (160 MB of them),
//! under an address-space limit of 1 GiB (1360921 read the whole body into a
//! string and built a JSON tree of it, several GB). No root needed. A test
//! file of its own: the peak RSS of its one child is read from getrusage.
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::Command,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_remote-vm-daemon");
const SAMPLES: usize = 30_000_000;

/// A server answering every request with one series of `SAMPLES` samples.
fn hostile_prometheus() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"j","instance":"h"},"values":["#;
            let sample = r#"[1,"1"],"#;
            let tail = r#"[1,"1"]]}]}}"#;
            let len = head.len() + sample.len() * (SAMPLES - 1) + tail.len();
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{head}");
            let chunk = sample.repeat(100_000);
            for _ in 0..(SAMPLES - 1) / 100_000 {
                if stream.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
            let _ = stream.write_all(sample.repeat((SAMPLES - 1) % 100_000).as_bytes());
            let _ = stream.write_all(tail.as_bytes());
        }
    });
    format!("http://{addr}")
}

#[test]
fn an_answer_past_the_sample_limit_is_refused_while_it_streams_within_bounded_memory() {
    let url = hostile_prometheus();
    let out = Command::new("prlimit")
        .arg(format!("--as={}", 1u64 << 30))
        .arg(DAEMON)
        .args(["compare", "--prometheus", &url, "--mode", "raw"])
        .output()
        .expect("prlimit (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.trim_end().ends_with(": more than 10000000 samples (shorten --range or narrow --selector)"),
        "{stderr}"
    );
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let peak_mib = usage.ru_maxrss / 1024;
    println!("compare's peak RSS on a 240 MB answer: {peak_mib} MiB");
    assert!(peak_mib < 512, "compare peaked at {peak_mib} MiB");
}
