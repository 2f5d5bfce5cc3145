//! The systemd side of the abuse soak, checked: what `rvm-testkit cgroup-soak`
//! reported from inside the systemd VM (see cgsoak.rs in remote-vm-testkit for
//! the ground truth it carries) against what must hold, and its table.
use remote_vm_common::{MAX_CONNECTIONS_DEFAULT, RENDER_FDS, WEB_FD_MARGIN, catalog as cat};
use serde_json::Value;

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(-1.0)
}

/// What must hold of a `cgroup-soak-result` report; empty when all does.
pub fn failures(r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut want = |what: String, ok: bool| {
        if !ok {
            out.push(what);
        }
    };
    let readers = n(&r["readers"]);
    let listed = readers.min(n(&r["listed_max"]));
    let (a, b) = (r["cgroup_a"].as_str().unwrap_or("?"), r["cgroup_b"].as_str().unwrap_or("?"));
    let rounds = r["rounds"].as_array().cloned().unwrap_or_default();
    let phases = |p: &str| rounds.iter().filter(|x| x["phase"] == p).count();
    want(
        format!("cgroup soak: rounds before, during and after the move (got {}, {}, {})", phases("before"), phases("move"), phases("after")),
        readers > 0 && phases("before") >= 1 && phases("move") == 1 && phases("after") >= 1,
    );
    for (i, x) in rounds.iter().enumerate() {
        let phase = x["phase"].as_str().unwrap_or("?");
        let name = format!("cgroup soak round {} ({phase})", i + 1);
        want(format!("{name}: every reader queued in time and waited out the hold: {}", x["unsettled"]), x["settled"] == true);
        want(format!("{name}: /stalls was read within the hold"), x["looked_within_the_hold"] == true);
        want(format!("{name}: {listed} readers listed in progress (got {})", n(&x["listed"])), n(&x["listed"]) == listed);
        want(format!("{name}: {} {readers} (got {})", cat::MMAP_LOCK_WAITERS.name, f(&x["waiters"])), f(&x["waiters"]) == readers as f64);
        let cgroups: Vec<(String, u64)> = x["cgroups"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), n(v))).collect()).unwrap_or_default();
        let only = |allowed: &[&str]| cgroups.iter().all(|(k, _)| allowed.contains(&k.as_str())) && cgroups.iter().map(|(_, c)| c).sum::<u64>() == listed;
        let ok = match phase {
            "before" => only(&[a]),
            "after" => only(&[b]),
            // Waits that began in c, gone before anything looked it up.
            "move" => only(&["null"]) && x["moved_within_the_hold"] == true,
            _ => false,
        };
        want(format!("{name}: the readers' cgroups {cgroups:?}"), ok);
    }
    let stalls = readers * rounds.len() as u64;
    want(
        format!("cgroup soak: {}{{lock_mode=\"read\"}} grew by readers × rounds = {stalls} (got {})", cat::STALLS.name, f(&r["stalls_counted"])),
        f(&r["stalls_counted"]) == stalls as f64,
    );
    for who in ["metrics", "stalls"] {
        want(format!("cgroup soak: {who} scrapes failed: {}", r[who]["failures"]), n(&r[who]["failed"]) == 0 && n(&r[who]["ok"]) > 0);
    }
    want(format!("cgroup soak: systemctl reload ran and succeeded ({} of {})", n(&r["reloads"]) - n(&r["reloads_failed"]), n(&r["reloads"])), n(&r["reloads"]) > 0 && n(&r["reloads_failed"]) == 0);
    let d = &r["daemon"];
    want("cgroup soak: the daemon kept its pid and was not restarted".into(), d["same_pid"] == true && n(&d["restarts"]) == 0);
    let bound = fd_bound(d);
    want(format!("cgroup soak: descriptors peaked at {}, past the bound {bound}", n(&d["fds_peak"])), n(&d["fds_peak"]) <= bound);
    let squat = &r["squat"];
    // On both loopbacks: the socket unit holds 127.0.0.1 and ::1.
    let bound: Vec<(String, u64)> = squat["bound"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), n(v))).collect()).unwrap_or_default();
    let tried = |prefix: &str| bound.iter().any(|(k, _)| k.starts_with(prefix));
    want(
        format!("cgroup soak: the user never bound the daemon's port on 127.0.0.1 or [::1] (attempts {}, bound {bound:?})", n(&squat["attempts"])),
        n(&squat["attempts"]) > 0 && tried("127.0.0.1:") && tried("[::1]:") && bound.iter().all(|(_, c)| *c == 0),
    );
    out
}

fn fd_bound(d: &Value) -> u64 {
    n(&d["fds_at_start"]) + (MAX_CONNECTIONS_DEFAULT + WEB_FD_MARGIN + RENDER_FDS) as u64
}

/// The soak as a table (markdown).
pub fn table(r: &Value, kernel: &str) -> String {
    let d = &r["daemon"];
    let seconds = f(&r["seconds"]);
    let rounds = r["rounds"].as_array().cloned().unwrap_or_default();
    let holds: Vec<f64> = rounds.iter().map(|x| f(&x["hold_seconds"])).collect();
    let row = |who: &str, s: &Value| format!("| {who} | {} | {} | {} ms |\n", n(&s["ok"]), n(&s["failed"]), n(&s["slowest_ms"]));
    let mut t = format!(
        "Abuse soak, systemd side, {seconds:.0} s in the systemd VM ({kernel}, QEMU TCG, 2 vCPUs; the shipped unit, socket and config):\n\n\
         | poller (once a second) | answered | failed | slowest |\n|---|---|---|---|\n"
    );
    t += &row("Prometheus-like: `/metrics` over TCP", &r["metrics"]);
    t += &row("operator: `/stalls` on the Unix socket", &r["stalls"]);
    let squat: Vec<String> = r["squat"]["bound"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k}: {}", n(v))).collect()).unwrap_or_default();
    t += &format!(
        "\n| what a user did | |\n|---|---|\n| readers waiting behind their own target's write hold | {} in {} rounds (holds {:.1}–{:.1} s) |\n| moved from a new {} to {} mid-hold, it and {} removed, before any `/stalls` | round {}: `/stalls` answered in {} ms |\n| tried to bind the port every 100 ms | {} attempts; bound {} |\n| root: `systemctl reload` every 5 s | {} ({} failed) |\n",
        n(&r["readers"]),
        rounds.len(),
        holds.iter().cloned().fold(f64::INFINITY, f64::min),
        holds.iter().cloned().fold(0.0, f64::max),
        r["cgroup_c"].as_str().unwrap_or("?"),
        r["cgroup_b"].as_str().unwrap_or("?"),
        r["cgroup_a"].as_str().unwrap_or("?"),
        rounds.iter().position(|x| x["phase"] == "move").map_or(0, |i| i + 1),
        rounds.iter().find(|x| x["phase"] == "move").map_or(0, |x| n(&x["look_ms"])),
        n(&r["squat"]["attempts"]),
        squat.join(", "),
        n(&r["reloads"]),
        n(&r["reloads_failed"]),
    );
    let cpu = f(&d["cpu_seconds"]);
    t += &format!(
        "\n| daemon | |\n|---|---|\n| restarts | {} (same pid: {}) |\n| descriptors | {} at start, peak {} (bound {}) |\n| peak RSS | {:.1} MiB |\n| CPU | {cpu:.1} s ({:.0} % of a core) |\n| stalls counted | {} (readers × rounds: {}) |\n| stall events dropped | {} |\n",
        n(&d["restarts"]),
        d["same_pid"],
        n(&d["fds_at_start"]),
        n(&d["fds_peak"]),
        fd_bound(d),
        n(&d["rss_peak_kib"]) as f64 / 1024.0,
        cpu / seconds.max(1.0) * 100.0,
        f(&r["stalls_counted"]),
        n(&r["readers"]) * rounds.len() as u64,
        f(&r["stall_events_dropped"]),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(phase: &str, cgroups: Value) -> Value {
        serde_json::json!({
            "phase": phase, "hold_seconds": 4.2, "settled": true, "unsettled": [],
            "looked_within_the_hold": true, "listed": 3, "cgroups": cgroups, "others_listed": 0,
            "waiters": 3.0, "moved_within_the_hold": if phase == "move" { Value::Bool(true) } else { Value::Null },
        })
    }

    fn report() -> Value {
        serde_json::json!({
            "seconds": 60.0, "readers": 3, "listed_max": 256, "cgroup_a": "/x/a", "cgroup_b": "/x/b", "cgroup_c": "/x/c",
            "rounds": [
                round("before", serde_json::json!({"/x/a": 3})),
                round("move", serde_json::json!({"null": 3})),
                round("after", serde_json::json!({"/x/b": 3})),
            ],
            "stalls_counted": 9.0, "stall_events_dropped": 0.0,
            "metrics": {"ok": 60, "failed": 0, "failures": [], "slowest_ms": 20},
            "stalls": {"ok": 60, "failed": 0, "failures": [], "slowest_ms": 20},
            "reloads": 12, "reloads_failed": 0,
            "squat": {"attempts": 600, "bound": {"127.0.0.1:19361": 0, "[::1]:19361": 0}},
            "daemon": {"same_pid": true, "restarts": 0, "fds_at_start": 20, "fds_peak": 24, "rss_peak_kib": 9000, "cpu_seconds": 3.0},
        })
    }

    #[test]
    fn a_report_that_holds_passes_and_each_defect_is_named() {
        assert_eq!(failures(&report()), Vec::<String>::new());
        let broken: [(&str, fn(&mut Value)); 8] = [
            ("readers' cgroups", |r| r["rounds"][2]["cgroups"] = serde_json::json!({"/x/a": 3})),
            ("readers' cgroups", |r| r["rounds"][1]["cgroups"] = serde_json::json!({"/x/c": 1, "null": 2})),
            ("grew by readers × rounds = 9", |r| r["stalls_counted"] = serde_json::json!(8.0)),
            ("lock_waiters 3", |r| r["rounds"][0]["waiters"] = serde_json::json!(4.0)),
            ("never bound", |r| r["squat"]["bound"]["127.0.0.1:19361"] = serde_json::json!(1)),
            ("never bound", |r| r["squat"]["bound"]["[::1]:19361"] = serde_json::json!(600)),
            ("past the bound", |r| r["daemon"]["fds_peak"] = serde_json::json!(20 + 64 + 10 + 1)),
            ("rounds before, during and after", |r| r["rounds"].as_array_mut().unwrap().truncate(2)),
        ];
        for (what, break_it) in broken {
            let mut r = report();
            break_it(&mut r);
            let f = failures(&r);
            assert!(f.iter().any(|l| l.contains(what)), "{what}: {f:?}");
        }
        let t = table(&report(), "Linux 6.12");
        assert!(t.contains("| 3 in 3 rounds (holds 4.2–4.2 s) |") && t.contains("127.0.0.1:19361: 0"), "{t}");
    }
}
