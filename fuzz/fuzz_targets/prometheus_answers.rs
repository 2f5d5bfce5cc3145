//! `compare` on whatever Prometheus answers: the input is the answers' HTTP
//! status (two bytes) and bodies, one per query in the order `compare` asks,
//! separated by a NUL byte. Whatever they hold, `compare` ends with a table
//! of finite, non-negative counts or with one error line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use remote_vm_daemon::cmd::compare::{Format, Limits, compare_answers, query_answer, render};

fuzz_target!(|data: &[u8]| {
    let Some((status, rest)) = data.split_first_chunk::<2>() else { return };
    let status = u16::from_le_bytes(*status) % 600;
    let mut bodies = rest.split(|b| *b == 0);
    let limits = Limits { series: 64, samples: 4096 };
    let result = compare_answers(
        |expr, _| {
            let body = bodies.next().unwrap_or_default();
            query_answer(expr, status, &String::from_utf8_lossy(body))
        },
        3600,
        "",
        0.0,
        limits,
    );
    match result {
        Ok(groups) => {
            for g in &groups {
                assert!(g.counts.values().all(|c| c.is_finite() && *c >= 0.0), "{g:?}");
            }
            for format in [Format::Table, Format::Markdown, Format::Json] {
                let out = render(&groups, format, "1h");
                if format == Format::Json {
                    serde_json::from_str::<serde_json::Value>(&out).expect("render's JSON parses");
                }
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
});
