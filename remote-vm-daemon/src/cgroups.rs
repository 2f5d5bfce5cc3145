//! Cgroup (v2) ids to paths, for the stall log and `/stalls`. The kernel
//! reports a reader's cgroup by id (`bpf_get_current_cgroup_id`: the inode
//! number of its directory on the cgroup2 file system); the path is found by
//! walking the cgroup2 mount.
//!
//! - Only the cgroup2 mount (from `/proc/self/mountinfo`; `/sys/fs/cgroup/unified`
//!   on a hybrid host) is walked, and only directories on its file system: an
//!   inode number of another file system (a v1 hierarchy, a tmpfs) never
//!   names a cgroup. A host without cgroup2 has no paths (`null`).
//! - One walk records every directory, so any number of unknown ids cost one
//!   walk, and a walk happens at most once per `WALK_EVERY` (an id still
//!   unknown then stays unknown until the next): a user who makes many
//!   cgroups and removes them cannot make every lookup walk the tree.
//! - A walk stops after `WALK_DIRS` directories or `WALK_TIME`.
//!
//! Each user (the stall reader thread, the render) owns its own `Paths`: no
//! lock is shared, so a walk on one never waits on the other.
use std::{
    collections::{HashMap, VecDeque},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// At most one walk per this.
pub const WALK_EVERY: Duration = Duration::from_secs(1);
/// A walk reads at most this many directories...
pub const WALK_DIRS: usize = 20_000;
/// ... and stops after this long.
pub const WALK_TIME: Duration = Duration::from_millis(200);

/// The cgroup2 file system's magic number (`statfs`' `f_type`).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup2 mount point in `/proc/self/mountinfo`'s text: the first entry
/// whose file system type is `cgroup2`.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2").then(|| unescape(before.split_whitespace().nth(4)?))?
    })
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> Option<PathBuf> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).ok()?, 8).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// Whether `path` is on a cgroup2 file system.
fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs fills the struct we pass for a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// Ids to paths, resolved by walks of one cgroup2 tree.
pub struct Paths {
    /// The cgroup2 mount and its device (`None`: no cgroup2 here).
    root: Option<(PathBuf, u64)>,
    known: HashMap<u64, String>,
    last_walk: Option<Instant>,
    /// Walks done (for tests and the log).
    pub walks: u64,
}

impl Paths {
    /// The host's cgroup2 mount, found in `/proc/self/mountinfo`.
    pub fn of_this_host() -> Paths {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount(&m))
            .filter(|p| is_cgroup2(p));
        Paths::at(root)
    }

    /// Paths under `root` (a directory tree; `None`: none).
    pub fn at(root: Option<PathBuf>) -> Paths {
        let root = root.and_then(|r| std::fs::metadata(&r).ok().map(|m| (r, m.dev())));
        Paths { root, known: HashMap::new(), last_walk: None, walks: 0 }
    }

    /// The path of cgroup `id` (`None`: id 0, not found, or no cgroup2).
    pub fn path(&mut self, id: u64, now: Instant) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.known.get(&id) {
            return Some(p.clone());
        }
        if self.last_walk.is_some_and(|t| now.duration_since(t) < WALK_EVERY) {
            return None;
        }
        self.walk(now);
        self.known.get(&id).cloned()
    }

    /// Every directory of the tree, breadth first, within the bounds; the
    /// known paths replaced by what it found (a removed cgroup is forgotten).
    fn walk(&mut self, now: Instant) {
        self.last_walk = Some(now);
        let Some((root, dev)) = &self.root else { return };
        self.walks += 1;
        let started = Instant::now();
        let mut found = HashMap::new();
        let mut queue = VecDeque::from([(root.clone(), "/".to_string())]);
        let mut seen = 0;
        while let Some((dir, path)) = queue.pop_front() {
            seen += 1;
            if seen > WALK_DIRS || started.elapsed() > WALK_TIME {
                break;
            }
            let Ok(m) = std::fs::symlink_metadata(&dir) else { continue };
            // Another file system mounted inside: not a cgroup of this tree.
            if m.dev() != *dev || !m.is_dir() {
                continue;
            }
            found.insert(m.ino(), path.clone());
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                    queue.push_back((e.path(), child));
                }
            }
        }
        self.known = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_hybrid_and_v1_hosts() {
        let unified = "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "24 1 0:21 / /sys/fs/cgroup ro shared:8 - tmpfs tmpfs ro,mode=755\n\
                      25 24 0:22 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n\
                      26 24 0:23 / /sys/fs/cgroup/systemd rw shared:10 - cgroup cgroup rw,name=systemd\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let v1 = "24 1 0:21 / /sys/fs/cgroup ro shared:8 - tmpfs tmpfs ro,mode=755\n\
                  26 24 0:23 / /sys/fs/cgroup/memory rw shared:10 - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(v1), None);
        // Optional fields and an escaped space.
        let odd = "25 1 0:22 / /mnt/cg\\040two rw shared:9 master:3 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(odd), Some(PathBuf::from("/mnt/cg two")));
    }

    #[test]
    fn this_process_s_own_cgroup_resolves_to_its_path() {
        // Ground truth from the kernel: /proc/self/cgroup's "0::PATH" line.
        let mut paths = Paths::of_this_host();
        let Some((root, _)) = paths.root.clone() else {
            return; // no cgroup2 here: nothing to resolve (and None for all, below)
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_string();
        let dir = root.join(own.trim_start_matches('/'));
        let id = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(paths.path(id, Instant::now()).as_deref(), Some(own.as_str()));
        let root_id = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(paths.path(root_id, Instant::now()).as_deref(), Some("/"));
    }

    #[test]
    fn many_unknown_ids_cost_one_walk_per_interval() {
        let dir = std::env::temp_dir().join(format!("rvm-cgroups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["a/b", "c"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let ino = |p: &str| std::fs::metadata(dir.join(p)).unwrap().ino();
        let mut paths = Paths::at(Some(dir.clone()));
        let t0 = Instant::now();
        assert_eq!(paths.path(ino("a/b"), t0).as_deref(), Some("/a/b"));
        assert_eq!(paths.path(ino("c"), t0).as_deref(), Some("/c"));
        assert_eq!(paths.walks, 1);
        // 256 ids of cgroups gone (or never there): no more walks this interval.
        for id in 1..=256 {
            assert_eq!(paths.path(u64::MAX - id, t0), None);
        }
        assert_eq!(paths.walks, 1);
        // A cgroup made since: found at the next interval's walk.
        std::fs::create_dir_all(dir.join("d")).unwrap();
        assert_eq!(paths.path(ino("d"), t0 + WALK_EVERY / 2), None);
        assert_eq!(paths.path(ino("d"), t0 + WALK_EVERY), Some("/d".into()));
        assert_eq!(paths.walks, 2);
        assert_eq!(paths.path(0, t0 + WALK_EVERY * 3), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_cgroup2_no_paths() {
        let mut paths = Paths::at(None);
        assert_eq!(paths.path(42, Instant::now()), None);
        assert_eq!(paths.walks, 0);
    }
}
