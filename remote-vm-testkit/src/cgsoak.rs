//! `rvm-testkit cgroup-soak`: the systemd side of the abuse soak. Run as root
//! inside the systemd VM (`cargo xtask deb-test`) against the installed,
//! socket-activated service, with what an unprivileged user (`--user`) can do
//! there:
//!
//! - a stall target of theirs (the merge kind, `--hold-ms`) and `--readers`
//!   reader processes of theirs (`cgroup-reader`, comm [`READER_COMM`]) that
//!   read its memory; in rounds, the target holds its mmap_lock for write and
//!   every reader is told to read once, inside the write-locked VMAs, so each
//!   waits behind the hold;
//! - the readers start in cgroup `/rvm-abuse/a`; before the round that starts
//!   past half the soak they are moved to a new `/rvm-abuse/c`, and while they
//!   wait in it, to `/rvm-abuse/b`, and `c` and `a` are removed (what a user
//!   with a delegated cgroup subtree can do; root does it here). No `/stalls`
//!   is asked for from the move to `c` until after the removal (the operator
//!   looks away), so every wait of that round carries the id of a cgroup the
//!   daemon never saw: 256 unknown ids in one answer, which once cost 256
//!   walks of the cgroup tree;
//! - the user tries to bind the daemon's port every 100 ms (`squat`).
//!
//! All the while a Prometheus-like scrape of `/metrics` over TCP and an
//! operator's `/stalls` on the Unix socket once a second, and root's
//! `systemctl reload` every [`RELOAD_EVERY`]. It prints `cgroup-soak-result
//! {json}`; xtask (`systemd.rs`) checks it against the ground truth it carries:
//!
//! - each round's `/stalls`, taken [`LOOK_AT`] into the hold, lists every
//!   reader (at most `WAITS_LISTED_MAX`) with cgroup `/rvm-abuse/a` before the
//!   move, `/rvm-abuse/b` after it, and `null` in the round of the move (the
//!   waits began in `c`, gone before anything looked it up);
//! - `remote_vm_mmap_lock_waiters` at that moment is the number of readers;
//! - `remote_vm_stalls_total{lock_mode="read"}` grows by readers × rounds:
//!   every read queued with at least [`QUEUED_BEFORE_END`] of the hold left (far
//!   above the threshold) and ended with the hold — a round where one did not
//!   is reported unsettled, not guessed at;
//! - no scrape failed, the daemon kept its pid and was not restarted, its
//!   descriptors stayed within their bound; RSS, CPU, stall events dropped and
//!   the squatter's attempts are reported.
use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    os::unix::{fs::FileExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use remote_vm_common::catalog::{MMAP_LOCK_WAITERS, STALL_EVENTS_DROPPED, STALLS};
use serde::Serialize;
use serde_json::Value;

use crate::{
    abuse::{Scrapes, Usage, cpu_seconds, fds},
    prom::{Scrape, get},
    stall::{self, Kind, StallTarget},
};

/// The readers' comm, as `/stalls` shows it.
pub const READER_COMM: &str = "cgreader";
/// The cgroup the readers live in, under the cgroup2 mount.
pub const CGROUP_PARENT: &str = "rvm-abuse";
/// `systemctl reload` this often.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// At most this many holds before the rounds, until one lasts `--hold-ms`.
const WARM_UP_HOLDS: usize = 4;
/// The readers are told to read this long after the hold's `go`.
const TELL_AFTER: Duration = Duration::from_millis(50);
/// The readers are moved (the `move` round) this long after the hold's `go`.
pub const MOVE_AT: Duration = Duration::from_millis(1500);
/// `/stalls` and `/metrics` are read this long after the hold's `go`.
pub const LOOK_AT: Duration = Duration::from_millis(2500);
/// A settled round: every reader's read began this long before the hold
/// ended, the look and the move, so that it waited far above the threshold
/// and in the cgroup it was in then.
pub const QUEUED_BEFORE_END: Duration = Duration::from_millis(500);

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// The unprivileged user who runs the target, the readers and the squatter.
    #[arg(long)]
    pub user: String,
    #[arg(long, default_value_t = 256)]
    pub readers: usize,
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The target's write hold (a lower bound; see stall.rs).
    #[arg(long, default_value_t = 3000)]
    pub hold_ms: u64,
    /// The daemon's TCP address (plain HTTP, the shipped default).
    #[arg(long, default_value = "127.0.0.1:19361")]
    pub listen: String,
    /// The daemon's Unix socket.
    #[arg(long, default_value = "/run/remote-vm/remote-vm.sock")]
    pub socket: PathBuf,
    #[arg(long, default_value = "remote-vm.service")]
    pub unit: String,
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_mount: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReaderArgs {
    /// The target's pid.
    #[arg(long)]
    pub pid: u32,
    /// This reader's number, echoed in its lines.
    #[arg(long)]
    pub slot: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SquatArgs {
    /// Addresses to try to bind, every 100 ms each; repeatable.
    #[arg(long, required = true)]
    pub addr: Vec<String>,
    #[arg(long)]
    pub seconds: u64,
}

/// One round as the soak saw it.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Round {
    /// `before` (readers in a), `move` (in c from before the hold, moved to b
    /// during it, c and a removed), `after` (in b).
    pub phase: &'static str,
    pub hold_seconds: f64,
    /// Every read began at least `QUEUED_BEFORE_END` before the hold ended,
    /// the move and the look, returned 64 bytes, and ended no earlier than
    /// that margin before the hold (by the holder's clock).
    pub settled: bool,
    /// Why not, if not.
    pub unsettled: Vec<String>,
    /// The look ended before the hold did.
    pub looked_within_the_hold: bool,
    /// `/stalls` then: waits in progress whose reader is one of ours, by cgroup
    /// (`null` for none); and any others.
    pub listed: usize,
    pub cgroups: BTreeMap<String, usize>,
    pub others_listed: usize,
    /// `remote_vm_mmap_lock_waiters` then.
    pub waiters: f64,
    /// How long that `/stalls` took.
    pub look_ms: u64,
    /// The move (the `move` round): done before the hold ended.
    pub moved_within_the_hold: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct Squat {
    pub attempts: u64,
    /// Address → binds that succeeded.
    pub bound: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct DaemonSeen {
    pub same_pid: bool,
    /// systemd's `NRestarts` over the soak.
    pub restarts: u64,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub readers: usize,
    pub listed_max: usize,
    /// The readers' cgroups, as `/stalls` names them (from the cgroup2 mount).
    pub cgroup_a: String,
    pub cgroup_b: String,
    pub cgroup_c: String,
    pub rounds: Vec<Round>,
    /// `remote_vm_stalls_total{lock_mode="read"}` over the rounds.
    pub stalls_counted: f64,
    pub stall_events_dropped: f64,
    pub metrics: Scrapes,
    pub stalls: Scrapes,
    pub reloads: u64,
    pub reloads_failed: u64,
    pub squat: Squat,
    pub daemon: DaemonSeen,
}

/// uid and gid of `user` from /etc/passwd.
fn user_ids(user: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .with_context(|| format!("no user {user:?} in /etc/passwd"))
}

fn systemctl_show(unit: &str, property: &str) -> Result<String> {
    let out = Command::new("systemctl").args(["show", "-p", property, "--value", unit]).output().context("run systemctl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A line on stdout in one `write` (the readers share one pipe: lines under
/// PIPE_BUF stay whole).
fn line(text: &str) -> Result<()> {
    let bytes = format!("{text}\n");
    // SAFETY: writes the bytes of a live buffer to fd 1.
    let n = unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
    ensure!(n == bytes.len() as isize, "write: {}", std::io::Error::last_os_error());
    Ok(())
}

/// `rvm-testkit cgroup-reader`: says `ready SLOT`, then for each address read
/// on stdin (hex) reads 64 bytes of the target's memory there and says `done
/// SLOT START_NS END_NS OK` (CLOCK_MONOTONIC). Ends at stdin's end.
pub fn reader_main(args: &ReaderArgs) -> Result<()> {
    let name = std::ffi::CString::new(READER_COMM)?;
    // SAFETY: PR_SET_NAME with a NUL-terminated name.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    let mem = std::fs::File::open(format!("/proc/{}/mem", args.pid)).with_context(|| format!("open /proc/{}/mem", args.pid))?;
    line(&format!("ready {}", args.slot))?;
    let mut buf = [0u8; 64];
    for addr in std::io::stdin().lock().lines() {
        let addr = u64::from_str_radix(addr?.trim(), 16)?;
        let start = stall::monotonic_ns();
        let ok = matches!(mem.read_at(&mut buf, addr), Ok(64));
        let end = stall::monotonic_ns();
        line(&format!("done {} {start} {end} {ok}", args.slot))?;
    }
    Ok(())
}

/// `rvm-testkit squat`: tries to bind each address every 100 ms; prints
/// `squat-result {json}`.
pub fn squat_main(args: &SquatArgs) -> Result<()> {
    let mut squat = Squat::default();
    let end = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        squat.attempts += 1;
        for a in &args.addr {
            let got = TcpListener::bind(a.as_str()).is_ok();
            *squat.bound.entry(a.clone()).or_default() += u64::from(got);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("squat-result {}", serde_json::to_string(&squat)?);
    Ok(())
}

/// The readers: children of this process, the user's, sharing one pipe for
/// their lines.
struct Readers {
    children: Vec<(Child, ChildStdin)>,
    lines: mpsc::Receiver<String>,
}

impl Readers {
    fn spawn(exe: &Path, n: usize, target: u32, user: (u32, u32), cgroup: &Path) -> Result<Readers> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors this function then owns.
        ensure!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0, "pipe2: {}", std::io::Error::last_os_error());
        use std::os::fd::FromRawFd;
        // SAFETY: the descriptors pipe2 just returned, owned once each.
        let (read, write) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
        let mut children = Vec::with_capacity(n);
        for slot in 0..n {
            let mut child = Command::new(exe)
                .args(["cgroup-reader", "--pid", &target.to_string(), "--slot", &slot.to_string()])
                .uid(user.0)
                .gid(user.1)
                .stdin(Stdio::piped())
                .stdout(Stdio::from(write.try_clone()?))
                .spawn()
                .context("spawn a reader")?;
            std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).context("move a reader into its cgroup")?;
            let stdin = child.stdin.take().context("stdin")?;
            children.push((child, stdin));
        }
        drop(write);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(read).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut ready = 0;
        while ready < n {
            let l = lines.recv_timeout(Duration::from_secs(120)).context("readers not ready after 120 s")?;
            ensure!(l.starts_with("ready "), "a reader said {l:?}");
            ready += 1;
        }
        Ok(Readers { children, lines })
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(c, _)| c.id()).collect()
    }

    fn tell(&mut self, addr: u64) -> Result<()> {
        for (_, stdin) in &mut self.children {
            writeln!(stdin, "{addr:x}")?;
            stdin.flush()?;
        }
        Ok(())
    }

    /// Every reader's `done`: (start, end, ok) by slot.
    fn collect(&self) -> Result<Vec<(u64, u64, bool)>> {
        let mut got: Vec<Option<(u64, u64, bool)>> = vec![None; self.children.len()];
        let mut left = got.len();
        while left > 0 {
            let l = self.lines.recv_timeout(Duration::from_secs(120)).context("a reader did not finish its read within 120 s")?;
            let f: Vec<&str> = l.split_whitespace().collect();
            let [_, slot, start, end, ok] = f[..] else { bail!("a reader said {l:?}") };
            let slot: usize = slot.parse()?;
            let entry = got.get_mut(slot).with_context(|| format!("a reader said {l:?}"))?;
            ensure!(entry.is_none(), "reader {slot} answered twice");
            *entry = Some((start.parse()?, end.parse()?, ok == "true"));
            left -= 1;
        }
        Ok(got.into_iter().flatten().collect())
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for (child, stdin) in self.children.drain(..) {
            drop(stdin);
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `/stalls` now: (ours by cgroup, ours listed, others listed).
fn look(socket: &Path, ours: &HashMap<u32, ()>) -> Result<(BTreeMap<String, usize>, usize, usize)> {
    let (status, body) = get(&format!("unix:{}", socket.display()), "/stalls")?;
    ensure!(status == 200, "/stalls answered {status}");
    let page: Value = serde_json::from_str(&body)?;
    let list = page["in_progress"].as_array().context("/stalls has no in_progress")?;
    let mut by_cgroup = BTreeMap::new();
    let (mut listed, mut others) = (0, 0);
    for w in list {
        let pid = w["reader"]["pid"].as_u64().unwrap_or(0) as u32;
        if ours.contains_key(&pid) && w["reader"]["comm"] == READER_COMM {
            listed += 1;
            let cgroup = w["reader"]["cgroup"].as_str().unwrap_or("null").to_string();
            *by_cgroup.entry(cgroup).or_default() += 1;
        } else {
            others += 1;
        }
    }
    Ok((by_cgroup, listed, others))
}


pub fn run(args: &SoakArgs) -> Result<Report> {
    let user = user_ids(&args.user)?;
    let exe = std::env::current_exe()?;
    let pid: u32 = systemctl_show(&args.unit, "MainPID")?.parse().context("MainPID")?;
    ensure!(pid != 0, "{} is not running", args.unit);
    let restarts0: u64 = systemctl_show(&args.unit, "NRestarts")?.parse().unwrap_or(0);
    // The merge needs many VMAs under emulation; only root may allow them.
    std::fs::write("/proc/sys/vm/max_map_count", "2000000").context("raise vm.max_map_count")?;
    let parent = args.cgroup_mount.join(CGROUP_PARENT);
    let (a, b, c) = (parent.join("a"), parent.join("b"), parent.join("c"));
    for d in [&a, &b, &c, &parent] {
        let _ = std::fs::remove_dir(d);
    }
    // c is made at the move (a walk of the tree would see it otherwise).
    for d in [&parent, &a, &b] {
        std::fs::create_dir(d).with_context(|| format!("mkdir {}", d.display()))?;
    }
    eprintln!("cgroup-soak: calibrating the stall target (merge, {} ms)", args.hold_ms);
    let mut target = StallTarget::spawn_as(&exe, Kind::Merge { hold_ms: args.hold_ms }, Some(user))?;
    // Holds that come out short grow the layout (stall.rs): a few before the
    // rounds, so that the rounds' holds outlast the look.
    for _ in 0..WARM_UP_HOLDS {
        let ns = target.hold()?;
        eprintln!("cgroup-soak: warm-up hold {:.2} s", ns as f64 / 1e9);
        if ns >= args.hold_ms * 1_000_000 {
            break;
        }
    }
    eprintln!("cgroup-soak: starting {} readers in {}", args.readers, a.display());
    let mut readers = Readers::spawn(&exe, args.readers, target.pid(), user, &a)?;
    let ours: HashMap<u32, ()> = readers.pids().into_iter().map(|p| (p, ())).collect();
    let listen = args.listen.clone();
    let before = Scrape::fetch(&listen)?;
    let stop = AtomicBool::new(false);
    // The operator looks away in the round of the move (see below).
    let paused = AtomicBool::new(false);
    let started = Instant::now();
    let fds0 = fds(pid);
    let cpu0 = cpu_seconds(pid);
    std::thread::scope(|scope| -> Result<Report> {
        let (stop, paused) = (&stop, &paused);
        let poll = |path: &'static str, target: String, pausable: bool| {
            move || {
                let mut s = Scrapes::default();
                while !stop.load(Ordering::Relaxed) {
                    if pausable && paused.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let t = Instant::now();
                    let r = get(&target, path).map(|(status, _)| status).map_err(anyhow::Error::from);
                    s.record(t.elapsed(), r);
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
                }
                s
            }
        };
        let metrics = scope.spawn(poll("/metrics", listen.clone(), false));
        let stalls = scope.spawn(poll("/stalls", format!("unix:{}", args.socket.display()), true));
        let reloads = scope.spawn(|| {
            let (mut done, mut failed) = (0u64, 0u64);
            let mut next = Instant::now() + RELOAD_EVERY;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next += RELOAD_EVERY;
                    let ok = Command::new("systemctl").args(["reload", &args.unit]).status().is_ok_and(|s| s.success());
                    done += 1;
                    failed += u64::from(!ok);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (done, failed)
        });
        let port = listen.rsplit_once(':').map_or("19361", |(_, p)| p).to_string();
        let squatter = Command::new(&exe)
            .args(["squat", "--seconds", &args.seconds.to_string(), "--addr", &listen, "--addr", &format!("[::1]:{port}")])
            .uid(user.0)
            .gid(user.1)
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn the squatter")?;
        let sampler = scope.spawn(move || {
            let mut d = DaemonSeen { usage: Usage { fds_at_start: fds0, ..Usage::default() }, ..DaemonSeen::default() };
            while !stop.load(Ordering::Relaxed) {
                d.usage.sample(pid);
                std::thread::sleep(Duration::from_secs(1));
            }
            d
        });

        let soak = Duration::from_secs(args.seconds);
        let mut rounds: Vec<Round> = Vec::new();
        let mut phase = "before";
        let result = (|| -> Result<()> {
            loop {
                let elapsed = started.elapsed();
                if phase == "before" && !rounds.is_empty() && elapsed >= soak / 2 {
                    phase = "move";
                } else if phase == "move" {
                    phase = "after";
                }
                if phase == "after" && elapsed >= soak && rounds.last().is_some_and(|r| r.phase == "after") {
                    break;
                }
                let mut round = Round { phase, ..Round::default() };
                if phase == "move" {
                    // Into c, which no look will have seen when it goes: the
                    // waits of this round carry an id nothing can resolve.
                    paused.store(true, Ordering::Relaxed);
                    std::fs::create_dir(&c).with_context(|| format!("mkdir {}", c.display()))?;
                    for p in readers.pids() {
                        std::fs::write(c.join("cgroup.procs"), p.to_string()).context("move a reader to c")?;
                    }
                }
                target.start_hold()?;
                let go = Instant::now();
                let inside = target.inside.context("the merge hold names no address")?;
                std::thread::sleep(TELL_AFTER);
                readers.tell(inside)?;
                // The move: once every reader waits (checked below), before the look.
                let mut moved = None;
                if phase == "move" {
                    std::thread::sleep(MOVE_AT.saturating_sub(go.elapsed()));
                    let began = stall::monotonic_ns();
                    for p in readers.pids() {
                        std::fs::write(b.join("cgroup.procs"), p.to_string()).context("move a reader to b")?;
                    }
                    std::fs::remove_dir(&c).context("rmdir c")?;
                    std::fs::remove_dir(&a).context("rmdir a")?;
                    moved = Some((began, stall::monotonic_ns()));
                }
                std::thread::sleep(LOOK_AT.saturating_sub(go.elapsed()));
                let look_ns = stall::monotonic_ns();
                let (cgroups, listed, others) = look(&args.socket, &ours)?;
                round.look_ms = (stall::monotonic_ns() - look_ns) / 1_000_000;
                paused.store(false, Ordering::Relaxed);
                let mid = Scrape::fetch(&listen)?;
                let looked_ns = stall::monotonic_ns();
                let held = target.end_hold_timed()?;
                let reads = readers.collect()?;
                round.hold_seconds = held.ns as f64 / 1e9;
                round.looked_within_the_hold = looked_ns < held.end_ns;
                round.moved_within_the_hold = moved.map(|(_, end)| end < held.end_ns);
                // Every read must have begun well before what is compared
                // with it: the hold's end, the look, the move.
                let margin = QUEUED_BEFORE_END.as_nanos() as u64;
                let by = moved.map_or(look_ns, |(began, _)| began).min(look_ns).min(held.end_ns);
                for (slot, (start, end, ok)) in reads.iter().enumerate() {
                    let why = if !ok {
                        Some("its read failed".to_string())
                    } else if start + margin > by {
                        Some(format!("its read began only {:.3} s before the hold's end, the move or the look", (by as f64 - *start as f64) / 1e9))
                    } else if end + margin < held.end_ns {
                        // (The holder's clock stops after mprotect() returns,
                        // the readers may run first: hence the margin.)
                        Some(format!("its read ended {:.3} s before the hold", (held.end_ns as f64 - *end as f64) / 1e9))
                    } else {
                        None
                    };
                    if let Some(why) = why.filter(|_| round.unsettled.len() < 5) {
                        round.unsettled.push(format!("reader {slot}: {why}"));
                    }
                }
                round.settled = round.unsettled.is_empty();
                round.cgroups = cgroups;
                round.listed = listed;
                round.others_listed = others;
                round.waiters = mid.value(MMAP_LOCK_WAITERS.name, &[]).unwrap_or(-1.0);
                eprintln!(
                    "cgroup-soak: round {} ({phase}): hold {:.2} s, {listed} listed {:?}, waiters {}, settled {}",
                    rounds.len() + 1,
                    round.hold_seconds,
                    round.cgroups,
                    round.waiters,
                    round.settled
                );
                rounds.push(round);
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        })();
        drop(readers);
        let after = Scrape::fetch(&listen);
        stop.store(true, Ordering::Relaxed);
        let cpu = cpu_seconds(pid) - cpu0;
        let metrics = metrics.join().map_err(|_| anyhow::anyhow!("the scraper panicked"))?;
        let stalls = stalls.join().map_err(|_| anyhow::anyhow!("the operator panicked"))?;
        let (reloads, reloads_failed) = reloads.join().map_err(|_| anyhow::anyhow!("the reloader panicked"))?;
        let mut daemon = sampler.join().map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
        let out = squatter.wait_with_output()?;
        let squat: Squat = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("squat-result "))
            .map(serde_json::from_str::<Value>)
            .transpose()?
            .map(|v| Squat {
                attempts: v["attempts"].as_u64().unwrap_or(0),
                bound: v["bound"].as_object().map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect()).unwrap_or_default(),
            })
            .context("the squatter printed no result")?;
        result?;
        let after = after?;
        let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels).unwrap_or(0.0) - before.value(name, labels).unwrap_or(0.0);
        daemon.usage.cpu_seconds = cpu;
        daemon.same_pid = systemctl_show(&args.unit, "MainPID")? == pid.to_string();
        daemon.restarts = systemctl_show(&args.unit, "NRestarts")?.parse::<u64>().unwrap_or(0).saturating_sub(restarts0);
        let _ = std::fs::remove_dir(&b);
        let _ = std::fs::remove_dir(&parent);
        Ok(Report {
            seconds: started.elapsed().as_secs_f64(),
            readers: args.readers,
            listed_max: remote_vm_common::WAITS_LISTED_MAX,
            cgroup_a: format!("/{CGROUP_PARENT}/a"),
            cgroup_b: format!("/{CGROUP_PARENT}/b"),
            cgroup_c: format!("/{CGROUP_PARENT}/c"),
            rounds,
            stalls_counted: after.sum(STALLS.name, &[("lock_mode", remote_vm_common::catalog::LOCK_READ)]).unwrap_or(0.0)
                - before.sum(STALLS.name, &[("lock_mode", remote_vm_common::catalog::LOCK_READ)]).unwrap_or(0.0),
            stall_events_dropped: delta(STALL_EVENTS_DROPPED.name, &[]),
            metrics,
            stalls,
            reloads,
            reloads_failed,
            squat,
            daemon,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_in_etc_passwd() {
        assert_eq!(user_ids("root").unwrap(), (0, 0));
        assert!(user_ids("no such user here").is_err());
    }
}
