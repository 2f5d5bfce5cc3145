//! Which version of the series "mm: __access_remote_vm with per-VMA lock" the
//! running kernel behaves as, decided from what its start-up probe reads did —
//! never from its release or name.
//!
//! The versions differ where a read crosses a VMA boundary (checked in
//! `../shared/kernels/7.3/access-remote-vm-v{1,2}.patch`):
//! - v1 (posted 2026-06): `access_remote_vm_fast()` loops over VMAs, one
//!   `lock_vma_under_rcu()` per VMA, one `folio_walk_start()` per mapping
//!   entry: a resident read across two VMAs is lockless, two VMAs locked,
//!   two walks (one page each side).
//! - v2 (2026-06-24): one `lock_vma_under_rcu()` per call; a request that does
//!   not lie inside that VMA (`len > vma->vm_end - addr`) goes to the slow path
//!   whole before any walk: one VMA locked, no walk, then the mmap_lock.
//!
//! The daemon reads 64 bytes of its own memory through `/proc/self/mem`
//! twice: inside one resident page (the lockless loop runs: `patched`), then
//! 32 bytes each side of the boundary of two resident anonymous mappings of
//! different protections (which never merge into one VMA).

/// A kernel's series version, as the `series` label of `remote_vm_kernel_info`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Crosses VMAs locklessly.
    V1 = 0,
    /// Sends a crossing request to the slow path whole.
    V2 = 1,
    /// No lockless read path (unpatched, or a kernel before the series).
    None = 2,
    /// Patched, but the probe reads did not show either shape (or could not
    /// be seen): said as such, never guessed.
    Unknown = 3,
}

impl Series {
    pub const ALL: [Series; 4] = [Series::V1, Series::V2, Series::None, Series::Unknown];

    pub const fn label(self) -> &'static str {
        match self {
            Series::V1 => "v1",
            Series::V2 => "v2",
            Series::None => "none",
            Series::Unknown => "unknown",
        }
    }
}

/// What a test kernel is expected to be (the kernel lists' `expect`, the
/// guest's `rvm.expect=`): always said with the image, never inferred from
/// its name or release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// The series' v1 (the shared 6.12 backport, 7.3.4 with v1 as posted).
    PatchedV1,
    /// The series' v2.
    PatchedV2,
    /// The lockless-path functions are there, the series is not.
    Unpatched,
    /// Before the series' functions (`lock_vma_under_rcu`, `folio_walk_start`).
    Legacy,
    /// Not said: the run reports what it found and checks no counts.
    Unknown,
}

impl Expectation {
    pub const ALL: [Expectation; 5] =
        [Expectation::PatchedV1, Expectation::PatchedV2, Expectation::Unpatched, Expectation::Legacy, Expectation::Unknown];

    /// The word written in kernel lists and on the guest's command line.
    pub const fn word(self) -> &'static str {
        match self {
            Expectation::PatchedV1 => "patched-v1",
            Expectation::PatchedV2 => "patched-v2",
            Expectation::Unpatched => "unpatched",
            Expectation::Legacy => "legacy",
            Expectation::Unknown => "unknown",
        }
    }

    pub fn parse(word: &str) -> Option<Expectation> {
        Expectation::ALL.into_iter().find(|e| e.word() == word)
    }

    pub const fn is_patched(self) -> bool {
        matches!(self, Expectation::PatchedV1 | Expectation::PatchedV2)
    }

    /// What `remote_vm_kernel_info`'s `series` must say on such a kernel.
    pub const fn series(self) -> Series {
        match self {
            Expectation::PatchedV1 => Series::V1,
            Expectation::PatchedV2 => Series::V2,
            Expectation::Unpatched | Expectation::Legacy => Series::None,
            Expectation::Unknown => Series::Unknown,
        }
    }
}

/// The bytes the crossing probe read takes on each side of the boundary.
pub const CROSSING_HALF: usize = 32;

/// What the probes saw of one start-up probe read (`SelfTest`'s counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeRead {
    /// Finished calls seen.
    pub calls: u32,
    /// VMAs `lock_vma_under_rcu()` locked (counted where that function is probed).
    pub vmas: u32,
    /// Successful lockless walks (counted where `folio_walk_start()` is probed).
    pub walks: u32,
}

/// Which of the lockless loop's steps the probes see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub walks: bool,
    pub vmas: bool,
}

/// The series version of a kernel that ran the lockless loop for a read
/// inside one page, from the crossing read (`across`): v1 walks both pages
/// (and locks both VMAs), v2 locks one VMA and walks nothing. Every step the
/// probes see must agree; anything else is `Unknown`, with why.
pub fn fingerprint(across: ProbeRead, seen: Seen) -> (Series, &'static str) {
    if !seen.walks && !seen.vmas {
        return (Series::Unknown, "neither the VMA step nor the walks of the lockless loop are probed");
    }
    if across.calls != 1 {
        return (Series::Unknown, "the read across two VMAs was not seen as one call");
    }
    let v1 = (!seen.walks || across.walks == 2) && (!seen.vmas || across.vmas == 2);
    let v2 = (!seen.walks || across.walks == 0) && (!seen.vmas || across.vmas == 1);
    match (v1, v2) {
        (true, false) => (Series::V1, "a resident read across two VMAs ran the lockless loop in both"),
        (false, true) => (Series::V2, "a resident read across two VMAs went to the mmap_lock path whole, with no lockless walk"),
        _ => (Series::Unknown, "a resident read across two VMAs did neither v1's nor v2's steps"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_expectation_is_one_word_and_names_its_series() {
        for e in Expectation::ALL {
            assert_eq!(Expectation::parse(e.word()), Some(e));
        }
        assert_eq!(Expectation::parse("patched"), None, "a bare patched says no version");
        let series: [Series; 5] = Expectation::ALL.map(Expectation::series);
        assert_eq!(series, [Series::V1, Series::V2, Series::None, Series::None, Series::Unknown]);
        let patched: [bool; 5] = Expectation::ALL.map(Expectation::is_patched);
        assert_eq!(patched, [true, true, false, false, false]);
    }

    const BOTH: Seen = Seen { walks: true, vmas: true };
    const WALKS: Seen = Seen { walks: true, vmas: false };
    const VMAS: Seen = Seen { walks: false, vmas: true };

    fn read(vmas: u32, walks: u32) -> ProbeRead {
        ProbeRead { calls: 1, vmas, walks }
    }

    #[test]
    fn v1_walks_both_sides_v2_none() {
        // v1: two VMAs locked, one walk in each.
        assert_eq!(fingerprint(read(2, 2), BOTH).0, Series::V1);
        assert_eq!(fingerprint(read(0, 2), WALKS).0, Series::V1);
        assert_eq!(fingerprint(read(2, 0), VMAS).0, Series::V1);
        // v2: one VMA locked, its length check fails before any walk.
        assert_eq!(fingerprint(read(1, 0), BOTH).0, Series::V2);
        assert_eq!(fingerprint(read(0, 0), WALKS).0, Series::V2);
        assert_eq!(fingerprint(read(1, 0), VMAS).0, Series::V2);
    }

    #[test]
    fn other_shapes_are_unknown() {
        // One side walked (a v1 that stopped at the second VMA, or a third
        // version): neither.
        assert_eq!(fingerprint(read(2, 1), BOTH).0, Series::Unknown);
        assert_eq!(fingerprint(read(0, 1), WALKS).0, Series::Unknown);
        // Steps that disagree.
        assert_eq!(fingerprint(read(1, 2), BOTH).0, Series::Unknown);
        assert_eq!(fingerprint(read(2, 0), BOTH).0, Series::Unknown);
        assert_eq!(fingerprint(read(3, 0), VMAS).0, Series::Unknown);
        // Not seen, or seen twice.
        assert_eq!(fingerprint(ProbeRead { calls: 0, ..read(2, 2) }, BOTH).0, Series::Unknown);
        assert_eq!(fingerprint(ProbeRead { calls: 2, ..read(2, 2) }, BOTH).0, Series::Unknown);
        // Nothing of the loop probed.
        assert_eq!(fingerprint(read(2, 2), Seen { walks: false, vmas: false }).0, Series::Unknown);
    }

    #[test]
    fn labels_are_distinct() {
        for (i, a) in Series::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
            for b in &Series::ALL[i + 1..] {
                assert_ne!(a.label(), b.label());
            }
        }
    }
}
