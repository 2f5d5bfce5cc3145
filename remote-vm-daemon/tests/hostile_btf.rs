//! Hostile `--btf` files (issue #18) through the real `check`: each is refused
//! with one line and exit 1, or read within bounds and reported as a degraded
//! state (exit 2). Every run is limited to 512 MiB of address space and must end
//! within 2 s. The kernel's own BTF is hidden (a tmpfs over /sys/kernel/btf in a
//! mount namespace of the run's own), so `--btf` is all the daemon has and the
//! file is what is tested. Host tests: they need root (and run under `cargo
//! xtask test`).
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const DAEMON: &str = env!("CARGO_BIN_EXE_remote-vm-daemon");
const MEMORY: u64 = 512 << 20;
const DEADLINE: Duration = Duration::from_secs(2);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rvm-hostile-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn temp_file(name: &str, contents: &[u8]) -> String {
    let path = temp_dir().join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

/// `check --btf BTF` with the kernel's BTF hidden, under `prlimit --as`, killed
/// (and failed) if it is not done within `limit`.
fn check_within(btf: &str, limit: Duration) -> Run {
    let dir = temp_dir();
    let stem = btf.replace('/', "_");
    let (out, err) = (dir.join(format!("{stem}.out")), dir.join(format!("{stem}.err")));
    let script = format!(
        "set -e\nmount -t tmpfs none /sys/kernel/btf\nexec prlimit --as={MEMORY} -- {DAEMON} check --btf '{btf}'\n"
    );
    // unshare and sh exec: the child is the daemon.
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn check");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "check --btf {btf} still running after {limit:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    }
}

fn check(btf: &str) -> Run {
    check_within(btf, DEADLINE)
}

/// Exit 1 and exactly one line on stderr: `cannot read BTF from FILE: why`.
fn refused(btf: &str) -> String {
    let r = check(btf);
    assert_eq!(r.code, Some(1), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{}", r.stderr);
    let prefix = format!("remote-vm-daemon: cannot read BTF from {btf}: ");
    lines[0].strip_prefix(&prefix).unwrap_or_else(|| panic!("{}", lines[0])).to_string()
}

/// Exit 2 (degraded) with every one of `lines` in `check`'s report.
fn degraded(btf: &str, lines: &[&str]) -> Run {
    let r = check(btf);
    assert_eq!(r.code, Some(2), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let got: Vec<&str> = r.stdout.lines().collect();
    for line in lines {
        assert!(got.contains(line), "{line:?} not in:\n{}", r.stdout);
    }
    assert!(got.iter().any(|l| l.starts_with("summary: degraded: ")), "{}", r.stdout);
    r
}

/// BTF as the kernel lays it out: header (with a layout section if given),
/// types, layout, strings.
#[derive(Default)]
struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
    layout: Option<Vec<(u8, u8)>>,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

impl Blob {
    fn new(strings: &[u8]) -> Blob {
        Blob {
            strings: strings.to_vec(),
            ..Blob::default()
        }
    }

    /// One type: `name_off`, kind, vlen, size/type, then `extra`.
    fn ty(&mut self, name_off: u32, kind: u32, vlen: u32, size_or_type: u32, extra: &[u8]) -> &mut Blob {
        for w in [name_off, (kind << 24) | vlen, size_or_type] {
            self.types.extend(w.to_le_bytes());
        }
        self.types.extend_from_slice(extra);
        self
    }

    /// A struct or union of `members`: (name offset, type, bit offset).
    fn compound(&mut self, kind: u32, name_off: u32, members: &[(u32, u32, u32)]) -> &mut Blob {
        let extra: Vec<u8> = members
            .iter()
            .flat_map(|(n, t, o)| [n.to_le_bytes(), t.to_le_bytes(), o.to_le_bytes()].concat())
            .collect();
        self.ty(name_off, kind, members.len() as u32, 64, &extra)
    }

    fn build(&self) -> Vec<u8> {
        let layout: Vec<u8> = self.layout.iter().flatten().flat_map(|(i, e)| [*i, *e, 0, 0]).collect();
        let t = self.types.len() as u32;
        let mut words = vec![0, t, t + layout.len() as u32, self.strings.len() as u32];
        if self.layout.is_some() {
            words.extend([t, layout.len() as u32]);
        }
        let mut out = vec![0x9f, 0xeb, 1, 0];
        out.extend((8 + 4 * words.len() as u32).to_le_bytes());
        for w in words {
            out.extend(w.to_le_bytes());
        }
        out.extend(&self.types);
        out.extend(&layout);
        out.extend(&self.strings);
        out
    }
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn self_referencing_anonymous_members_end() {
    // Issue #18's 547 bytes: `struct mm_struct` (1) whose anonymous members
    // are itself and union 2; unions 2 and 3 contain each other and 1. The old
    // walk took 40^8 steps (86 % of a core until killed).
    let members = |n: u32, to: &[u32]| -> Vec<(u32, u32, u32)> {
        (0..n).map(|i| (0, to[(i as usize) % to.len()], 0)).collect()
    };
    let mut b = Blob::new(b"\0mm_struct\0padding\0");
    b.compound(KIND_STRUCT, 1, &members(20, &[1, 2]))
        .compound(KIND_UNION, 0, &members(10, &[3, 1]))
        .compound(KIND_UNION, 0, &members(9, &[2, 3, 1]));
    let data = b.build();
    assert_eq!(data.len(), 547);
    let f = temp_file("self-referencing.btf", &data);
    degraded(
        &f,
        &[
            "btf: mm_struct.mmap_lock unknown (struct mm_struct has no field mmap_lock in BTF)",
            "btf: task_struct.mm unknown (struct task_struct not in BTF)",
        ],
    );
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn names_without_a_nul_are_refused() {
    // 440 KB: 18,000 member names pointing into 224 KiB of 'a' with no NUL
    // to the end of the string section. The old reader copied each name to
    // the end: more than 2 GB, then an abort.
    let mut strings = b"\0mm_struct\0".to_vec();
    strings.extend(std::iter::repeat_n(b'a', 224 << 10));
    let mut b = Blob::new(&strings);
    let members: Vec<(u32, u32, u32)> = (0..18_000).map(|i| (11 + i % 64, 0, 0)).collect();
    b.compound(KIND_STRUCT, 1, &members);
    let data = b.build();
    assert!((400_000..450_000).contains(&data.len()), "{}", data.len());
    assert_eq!(
        refused(&temp_file("no-nul.btf", &data)),
        "bad BTF string section (its last byte is not NUL: names would run past its end)"
    );
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn huge_string_offsets_are_refused() {
    // 432 KB: 36,000 members named at offsets near 4 GiB.
    let mut b = Blob::new(b"\0mm_struct\0");
    let members: Vec<(u32, u32, u32)> = (0..36_000).map(|i| (0xffff_fff0 - i, 0, 0)).collect();
    b.compound(KIND_STRUCT, 1, &members);
    let data = b.build();
    assert!((400_000..450_000).contains(&data.len()), "{}", data.len());
    assert_eq!(
        refused(&temp_file("huge-offsets.btf", &data)),
        "bad BTF type 1: member 0: name offset 4294967280 is past the string section (11 bytes)"
    );
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn files_that_are_not_regular_are_refused_unread() {
    // /dev/zero used to be read until memory ran out, a FIFO to block for a
    // writer forever.
    assert_eq!(refused("/dev/zero"), "not a regular file (a character device)");
    let fifo = temp_dir().join("btf.fifo");
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_eq!(refused(fifo.to_str().unwrap()), "not a regular file (a FIFO)");
    let dir = temp_dir().join("btf.d");
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(refused(dir.to_str().unwrap()), "not a regular file (a directory)");
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn a_file_larger_than_64_mib_is_refused_unread() {
    let path = temp_dir().join("huge.btf");
    std::fs::File::create(&path).unwrap().set_len((64 << 20) + 1).unwrap();
    assert_eq!(refused(path.to_str().unwrap()), "larger than 64 MiB, which no kernel's BTF is");
    std::fs::remove_file(&path).unwrap();
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn empty_and_truncated_headers_are_refused() {
    assert_eq!(
        refused(&temp_file("empty.btf", b"")),
        "truncated BTF (0 bytes, shorter than a 24-byte header)"
    );
    let mut truncated = vec![0x9f, 0xeb, 1, 0];
    truncated.extend(24u32.to_le_bytes());
    truncated.extend([0; 4]);
    assert_eq!(
        refused(&temp_file("truncated.btf", &truncated)),
        "truncated BTF (12 bytes, shorter than a 24-byte header)"
    );
    // A type section whose offset and length overflow 32 bits.
    let mut b = Blob::new(b"\0");
    b.ty(0, KIND_INT, 0, 4, &32u32.to_le_bytes());
    let mut data = b.build();
    data[8..16].copy_from_slice(&[0xff; 8]);
    assert_eq!(
        refused(&temp_file("overflowing-sections.btf", &data)),
        "truncated BTF (the type section ends at byte 8589934614, past the end of the file at 41)"
    );
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn type_counts_that_overflow_are_refused() {
    // One type more than BTF_MAX_TYPE (12 MB of pointers to void).
    let mut b = Blob::new(b"\0");
    for _ in 0..=0x000f_ffff {
        b.ty(0, KIND_PTR, 0, 0, &[]);
    }
    let f = temp_file("too-many-types.btf", &b.build());
    assert_eq!(refused(&f), "more than 1048575 BTF types (the kernel's limit, BTF_MAX_TYPE)");
    std::fs::remove_file(&f).unwrap();
    // A struct claiming 16,777,215 members in a 47-byte file.
    let mut b = Blob::new(b"\0mm_struct\0");
    b.ty(1, KIND_STRUCT, 0xff_ffff, 8, &[]);
    assert_eq!(
        refused(&temp_file("vlen.btf", &b.build())),
        "bad BTF type 1: kind 4 with vlen 16777215 needs 201326580 bytes after its header, the type section has 0 left"
    );
}

/// `int` (1), a type of kind 25 (2; 4 bytes and 2 × 8), `struct mm_struct` (3)
/// with `mmap_lock` at byte 8.
fn unknown_kind(layout: bool) -> Vec<u8> {
    let mut b = Blob::new(b"\0int\0mm_struct\0mmap_lock\0");
    b.ty(1, KIND_INT, 0, 4, &32u32.to_le_bytes())
        .ty(0, 25, 2, 0, &[0; 20])
        .compound(KIND_STRUCT, 5, &[(15, 1, 64)]);
    if layout {
        // `struct btf_layout` per kind: the 20 known, 20–24 empty, 25.
        let known = |k: u32| match k {
            1 | 14 | 17 => (4, 0),
            3 => (12, 0),
            4 | 5 | 15 | 19 => (0, 12),
            6 | 13 => (0, 8),
            _ => (0, 0),
        };
        let mut entries: Vec<(u8, u8)> = (0..25).map(known).collect();
        entries.push((4, 8));
        b.layout = Some(entries);
    }
    b.build()
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn an_unknown_kind_without_a_layout_section_degrades() {
    // Used to be fatal (exit 1): a kernel that adds a kind would crash-loop.
    let f = temp_file("unknown-kind.btf", &unknown_kind(false));
    let why = "unknown BTF kind 25 at type 2 and no layout section to skip it: types from 2 on not read";
    let r = degraded(
        &f,
        &[&format!("btf: mm_struct.mmap_lock unknown (struct mm_struct not in BTF; {why})")],
    );
    assert!(r.stderr.contains(&format!("BTF {f} read in part: {why}")), "{}", r.stderr);
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn an_unknown_kind_is_skipped_with_the_layout_section() {
    let f = temp_file("unknown-kind-layout.btf", &unknown_kind(true));
    degraded(
        &f,
        &[
            "btf: mm_struct.mmap_lock = 8",
            "btf: task_struct.mm unknown (struct task_struct not in BTF; 1 type skipped, of kinds this reader does not know: 25)",
        ],
    );
}

#[test]
#[ignore = "needs root (mount namespace) and BPF; run by cargo xtask test"]
fn the_kernels_own_btf_as_a_file_still_works() {
    // The control: the same harness with a good file.
    let f = temp_file("vmlinux.btf", &std::fs::read("/sys/kernel/btf/vmlinux").unwrap());
    let r = check_within(&f, Duration::from_secs(30));
    assert!(matches!(r.code, Some(0 | 2)), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("btf: mm_struct.mmap_lock = ")), "{}", r.stdout);
    assert!(
        lines.iter().any(|l| l.starts_with("kernel: release=") && l.contains(&format!(" btf={f} "))),
        "{}",
        r.stdout
    );
    std::fs::remove_file(&f).unwrap();
}
