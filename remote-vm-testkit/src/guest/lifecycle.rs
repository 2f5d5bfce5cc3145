//! The daemon's life: start with sd_notify, privileges dropped, SIGTERM and
//! SIGKILL leave nothing behind, a restart counts from zero.
use std::time::{Duration, Instant};

use anyhow::Result;

use remote_vm_common::{catalog as cat, classify::Path};

use crate::{
    classes::Kernel,
    prom::Scrape,
    workload::{self, Target},
};

use super::{
    harness::{Daemon, LISTEN, Report},
    scenario::classification,
};

/// The daemon's own BPF objects now loaded in the kernel: (STATS maps, programs
/// using them, links of those programs).
fn our_objects() -> (usize, usize, usize) {
    let maps: Vec<u32> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some("STATS"))
        .map(|m| m.id())
        .collect();
    let programs: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.map_ids().ok().flatten().is_some_and(|ids| ids.iter().any(|id| maps.contains(id))))
        .map(|p| p.id())
        .collect();
    let links = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| programs.contains(&l.program_id()))
        .count();
    (maps.len(), programs.len(), links)
}

/// Waits (up to 5 s: the kernel frees objects after the last fd closes) until no
/// object of a daemon is left.
fn objects_after_exit() -> (usize, usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = our_objects();
        if o == (0, 0, 0) || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn thread_cap_eff(pid: u32) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        if let Some(v) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) {
            out.push(v.trim().to_string());
        }
    }
    Ok(out)
}

/// Start (with sd_notify), drop privileges, count exactly, stop on SIGTERM with
/// nothing left; SIGKILL, restart: no duplicates, no double counts.
pub(super) fn lifecycle(report: &mut Report, kernel: Option<Kernel>) -> Result<()> {
    use std::os::unix::net::UnixDatagram;
    let name = "lifecycle";
    let sock_path = "/tmp/notify.sock";
    let _ = std::fs::remove_file(sock_path);
    let sock = UnixDatagram::bind(sock_path)?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut daemon = Daemon::start_with("", &[], &[("NOTIFY_SOCKET", sock_path)])?;
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    while !messages.iter().any(|m: &String| m.contains("READY=1")) {
        let n = sock.recv(&mut buf)?;
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    for m in &messages {
        println!("vmtest: {name}: sd_notify {m:?}");
    }
    let ready = messages.iter().position(|m| m.contains("READY=1")).unwrap_or(0);
    report.check(format!("{name}.notify.status_before_ready"), true, messages[..ready].iter().any(|m| m.starts_with("STATUS=")));
    report.check(format!("{name}.notify.ready_says_what_attached"), true, messages[ready].contains("STATUS=serving"));
    let pid = daemon.child.id();
    let caps = thread_cap_eff(pid)?;
    report.check(format!("{name}.threads"), true, !caps.is_empty());
    report.check(format!("{name}.cap_eff_every_thread"), "0000000000000000", caps.iter().find(|c| *c != "0000000000000000").unwrap_or(&"0000000000000000".to_string()));
    report.check(format!("{name}.objects_while_running.stats_maps"), 1, our_objects().0);
    // Numbers stay exact without privileges.
    classification(report, name, kernel, false, super::expect::scenario("first").vma_probed())?;

    // SIGTERM: exit 0 within 2 s, STOPPING=1, nothing left attached.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(s) = daemon.child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    report.check(format!("{name}.sigterm_exit_within_2s"), "Some(0)", format!("{:?}", status.map(|s| s.code().unwrap_or(-1))));
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    report.check(format!("{name}.notify.stopping"), true, stopping);
    report.check(format!("{name}.objects_after_sigterm"), "(0, 0, 0)", format!("{:?}", objects_after_exit()));
    drop(daemon);

    // SIGKILL: the kernel releases everything with the process.
    let mut daemon = Daemon::start("", &[])?;
    daemon.child.kill()?;
    daemon.child.wait()?;
    report.check(format!("{name}.objects_after_sigkill"), "(0, 0, 0)", format!("{:?}", objects_after_exit()));
    drop(daemon);

    // Restart: one instance's objects, counters from zero.
    let mut daemon = Daemon::start("", &[])?;
    let (maps, programs, links) = our_objects();
    report.check(format!("{name}.restart.stats_maps"), 1, maps);
    report.check(format!("{name}.restart.links_one_per_program"), programs, links);
    let target = Target::spawn(4, 1)?;
    for i in 0..10usize {
        target.pread(target.layout.resident + ((i % 4) * workload::PAGE) as u64, workload::PAGE)?;
    }
    drop(target);
    let s = Scrape::fetch(LISTEN)?;
    let reads: f64 = Path::ALL
        .iter()
        .map(|p| s.value(cat::READS.name, &[("path", p.label())]).unwrap_or(f64::NAN))
        .sum();
    report.check(format!("{name}.restart.reads_counted_once"), 10, reads);
    daemon.stop(report, name)?;
    Ok(())
}
