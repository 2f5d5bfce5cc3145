//! Kernel text symbols, to name the frames of a lock holder's kernel stack:
//! from `/proc/kallsyms` as root read it (the unit's `ExecStartPre=+` copies
//! it into its runtime directory, 0700: the daemon itself reads zeros there
//! without CAP_SYSLOG, which it does not get, and `ProcSubset=pid` hides it),
//! or a `System.map` (link-time addresses; Debian's `/boot` one is a
//! placeholder, the real one is in the -dbg package). The running kernel's
//! addresses are shifted by the KASLR slide (0 for kallsyms), found from one
//! runtime address the stack iterator reads anyway (`task_struct.sched_class`,
//! which points at one of the `*_sched_class` objects: the image moves as a
//! whole, by a multiple of 2 MiB). Raw addresses never leave the daemon: they
//! would give the slide away.
use std::{io::Read, path::PathBuf};

/// The kernel image's virtual placement is aligned to at least this
/// (`CONFIG_PHYSICAL_ALIGN`'s minimum on x86-64), so is the slide.
const SLIDE_ALIGN: u64 = 2 << 20;
/// A System.map is 5–8 MiB, a kallsyms with modules 10–20 MiB: no more is read.
const MAX_BYTES: u64 = 64 << 20;

/// Where the daemon looks, in order: the unit's copy of `/proc/kallsyms`,
/// `/proc/kallsyms` itself (a daemon run as root outside the unit), then a
/// `System.map` beside the kernel. `{release}` is `uname -r`.
pub const CANDIDATES: [&str; 3] = ["/run/remote-vm-symbols/kallsyms", "/proc/kallsyms", "/boot/System.map-{release}"];

#[derive(Debug)]
pub struct Symbols {
    /// Text symbols (`t`, `T`, `w`, `W`) by address: (address, start and
    /// end of the name in `names`). One buffer for the names: a kernel has
    /// 100 000 or more.
    text: Vec<(u64, u32, u32)>,
    names: String,
    /// `[_stext, _etext)`.
    stext: u64,
    etext: u64,
    /// Addresses of the `*_sched_class` objects.
    classes: Vec<u64>,
    pub source: PathBuf,
}

impl Symbols {
    /// The first candidate that reads as a symbol table, or why none did.
    pub fn load(release: &str) -> Result<Symbols, String> {
        let mut why = Vec::new();
        for path in CANDIDATES.map(|c| PathBuf::from(c.replace("{release}", release))) {
            let parsed = std::fs::File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| Symbols::read(std::io::BufReader::new(f.take(MAX_BYTES)), path.clone()));
            match parsed {
                Ok(s) => return Ok(s),
                Err(e) => why.push(format!("{}: {e}", path.display())),
            }
        }
        Err(format!("no kernel symbols ({})", why.join("; ")))
    }

    /// `System.map` and kallsyms lines: `ADDRESS TYPE NAME` (a module's
    /// symbols, with a fourth column, and other lines are skipped).
    #[cfg(test)]
    pub fn parse(text: &str, source: PathBuf) -> Result<Symbols, String> {
        Symbols::read(text.as_bytes(), source)
    }

    /// The same, a line at a time (a kallsyms is 10 MiB or more: it is never
    /// held whole). At most `MAX_BYTES` are read (the caller's `take`).
    pub fn read(mut input: impl std::io::BufRead, source: PathBuf) -> Result<Symbols, String> {
        let (mut text_syms, mut classes, mut names) = (Vec::new(), Vec::new(), String::new());
        let (mut stext, mut etext) = (None, None);
        let mut line = String::new();
        loop {
            line.clear();
            match input.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            let mut f = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name), None) = (f.next(), f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            match name {
                "_stext" => stext = Some(addr),
                "_etext" => etext = Some(addr),
                _ => {}
            }
            match kind {
                "t" | "T" | "w" | "W" => {
                    let start = names.len() as u32;
                    names.push_str(name);
                    text_syms.push((addr, start, names.len() as u32));
                }
                "d" | "D" | "r" | "R" if name.ends_with("_sched_class") => classes.push(addr),
                _ => {}
            }
        }
        let (Some(stext), Some(etext)) = (stext, etext) else {
            return Err("not a symbol table (no _stext/_etext)".into());
        };
        if stext == 0 {
            return Err("addresses hidden (zeros: read without CAP_SYSLOG, or kptr_restrict=2)".into());
        }
        if classes.is_empty() {
            return Err("no *_sched_class symbol (needed for the KASLR slide)".into());
        }
        text_syms.sort_unstable();
        text_syms.shrink_to_fit();
        names.shrink_to_fit();
        Ok(Symbols { text: text_syms, names, stext, etext, classes, source })
    }

    /// The KASLR slide, from the runtime address of a `*_sched_class`
    /// object: the one class for which the difference is aligned. `None`:
    /// none fits (the map is another build's).
    pub fn slide(&self, sched_class: u64) -> Option<u64> {
        let mut fits = self
            .classes
            .iter()
            .map(|c| sched_class.wrapping_sub(*c))
            .filter(|d| d % SLIDE_ALIGN == 0 && *d < (1 << 40));
        let slide = fits.next()?;
        // Two fitting classes would make the slide a guess.
        fits.all(|d| d == slide).then_some(slide)
    }

    /// `function+0xoffset` of a link-time address in the kernel's text.
    pub fn name(&self, addr: u64) -> Option<String> {
        if addr < self.stext || addr >= self.etext {
            return None;
        }
        let i = self.text.partition_point(|(a, _, _)| *a <= addr).checked_sub(1)?;
        let (start, from, to) = self.text[i];
        let name = self.names.get(from as usize..to as usize)?;
        Some(format!("{name}+{:#x}", addr - start))
    }
}

/// What a look at a stack gave, in words (`Err`) or frames: each frame named
/// (`function+0xoff`) or `?` (outside the kernel's text: a module's), never a
/// raw address. `switch_ip`, where the task switched out, must fall in
/// `__schedule` (`context_switch()` is inlined there): if these symbols put
/// it elsewhere they are not this kernel's, and nothing is named. (The
/// frames themselves start below the scheduler: `stack_trace_save_tsk()`
/// leaves its functions out.)
pub fn frames(symbols: &Symbols, sched_class: u64, switch_ip: u64, ips: &[u64]) -> Result<Vec<String>, String> {
    let other = |why: String| format!("{} does not match the running kernel ({why})", symbols.source.display());
    let slide = symbols.slide(sched_class).ok_or_else(|| other("no scheduling class where the task's is".into()))?;
    let switched = symbols.name(switch_ip.wrapping_sub(slide)).unwrap_or_else(|| "outside the text".into());
    if !switched.starts_with("__schedule+") {
        return Err(other(format!("the task switched out in {switched}, not __schedule")));
    }
    Ok(ips.iter().map(|ip| symbols.name(ip.wrapping_sub(slide)).unwrap_or_else(|| "?".into())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81001000 t __schedule
ffffffff81001800 T schedule
ffffffff81002000 T do_mprotect_pkey
ffffffff81002400 T __x64_sys_mprotect
ffffffff81003000 T _etext
ffffffff82000100 D idle_sched_class
ffffffff82000200 D fair_sched_class
ffffffff82000300 D rt_sched_class
ffffffff83000000 B some_bss
0000000000000000 A __per_cpu_start
ffffffffc0001000 t ext4_foo	[ext4]
garbage line
";

    fn map() -> Symbols {
        Symbols::parse(MAP, PathBuf::from("System.map-test")).unwrap()
    }

    #[test]
    fn the_slide_is_the_aligned_difference_to_a_scheduling_class() {
        let s = map();
        let slide = 0x1d_c00000; // 238 × 2 MiB
        assert_eq!(s.slide(0xffffffff82000200 + slide), Some(slide));
        assert_eq!(s.slide(0xffffffff82000300), Some(0), "no KASLR");
        // Another build's map: the classes sit elsewhere.
        assert_eq!(s.slide(0xffffffff82000250 + slide), None);
    }

    #[test]
    fn frames_are_named_with_offsets_and_only_inside_the_text() {
        let s = map();
        let slide = 0x4000_0000;
        let ips = [0xffffffff81002010 + slide, 0xffffffff81002420 + slide, 0xffffffffc0001000];
        assert_eq!(
            frames(&s, 0xffffffff82000200 + slide, 0xffffffff81001234 + slide, &ips).unwrap(),
            vec!["do_mprotect_pkey+0x10", "__x64_sys_mprotect+0x20", "?"]
        );
        assert_eq!(s.name(0xffffffff81003000), None, "_etext is past the text");
        assert_eq!(s.name(0xffffffff80fff000), None);
    }

    #[test]
    fn a_map_that_is_not_this_kernels_names_nothing() {
        let s = map();
        // The slide fits, but the task switched out elsewhere than in the
        // scheduler: the symbols are another build's.
        let e = frames(&s, 0xffffffff82000200, 0xffffffff81002010, &[0xffffffff81002010]).unwrap_err();
        assert!(e.contains("does not match") && e.contains("do_mprotect_pkey+0x10"), "{e}");
        let e = frames(&s, 0xffffffff82000201, 0xffffffff81001010, &[0xffffffff81001010]).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn other_files_are_refused() {
        assert!(Symbols::parse("hello\n", PathBuf::new()).unwrap_err().contains("not a symbol table"));
        // Debian's /boot/System.map.
        let placeholder = "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n";
        assert!(Symbols::parse(placeholder, PathBuf::new()).unwrap_err().contains("not a symbol table"));
        let hidden = "0000000000000000 T _stext\n0000000000000000 T _etext\n0000000000000000 D fair_sched_class\n";
        assert!(Symbols::parse(hidden, PathBuf::new()).unwrap_err().contains("hidden"));
        let no_class = "ffffffff81000000 T _stext\nffffffff81003000 T _etext\n";
        assert!(Symbols::parse(no_class, PathBuf::new()).unwrap_err().contains("sched_class"));
    }
}
