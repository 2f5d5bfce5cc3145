//! `compare` on whatever Prometheus answers: the input is the answers' HTTP
//! status (two bytes), the mode (one byte) and bodies, one per query in the order `compare` asks,
//! separated by a NUL byte. Whatever they hold, `compare` ends with a table
//! of finite, non-negative counts or with one error line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use remote_vm_daemon::cmd::compare::{Format, Limits, Mode, Request, compare_answers, query_answer, render};

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<3>() else { return };
    let status = u16::from_le_bytes([head[0], head[1]]) % 600;
    // Either mode (and auto, which asks for the estimate first).
    let (mode, chunk_s) = match head[2] % 4 {
        0 => (Mode::Raw, None),
        1 => (Mode::Chunked, Some(600)),
        2 => (Mode::Chunked, None),
        _ => (Mode::Auto, None),
    };
    let mut bodies = rest.split(|b| *b == 0);
    let limits = Limits { series: 64, samples: 4096 };
    let result = compare_answers(
        |expr, _, answer| {
            let body = bodies.next().unwrap_or_default();
            query_answer(expr, status, body, answer)
        },
        &Request { range_s: 3600, selector: "", end: 7200.0, mode, chunk_s },
        limits,
    );
    match result {
        Ok(c) => {
            for g in &c.groups {
                assert!(g.counts.values().all(|c| c.is_finite() && *c >= 0.0), "{g:?}");
            }
            for format in [Format::Table, Format::Markdown, Format::Json] {
                let out = render(&c, format, "1h");
                if format == Format::Json {
                    serde_json::from_str::<serde_json::Value>(&out).expect("render's JSON parses");
                }
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
});
