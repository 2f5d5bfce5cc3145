//! Object-level proof that the shared per-CPU counters are only ever changed by
//! atomic adds: a preemption race between two program runs on one CPU rarely
//! reproduces under TCG, so the instructions themselves are checked.
//!
//! Every program section of the embedded object is scanned in order. A register
//! holding a pointer into a `HITS` or `STATS` value (the result of
//! `bpf_map_lookup_elem` on either, moved, offset or spilled to the stack and
//! reloaded) may be the destination of `lock … += …` only: a plain store through
//! it is the load–add–store that loses increments.
use std::collections::{BTreeMap, BTreeSet};

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

use super::{EBPF_OBJECT, HITS, STATS};

const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const MOV64_REG: u8 = 0xbf;
const ADD64_IMM: u8 = 0x07;
const ADD64_REG: u8 = 0x0f;
const JA: u8 = 0x05;
const JA32: u8 = 0x06;
const LDX_DW: u8 = 0x79;
const STX_DW: u8 = 0x7b;
const FP: u8 = 10;

/// What the scan knows before an instruction.
#[derive(Clone, Debug, Default)]
struct State {
    /// Registers holding a pointer into a counter value.
    ptr: [bool; 11],
    /// Stack slots (by offset from r10) holding one.
    spilled: BTreeMap<i16, bool>,
    /// r1 holds the HITS or STATS map (the next lookup's argument).
    r1_is_counter_map: bool,
}

impl State {
    /// Whether this state already has every pointer `other` has.
    fn covers(&self, other: &State) -> bool {
        self.ptr.iter().zip(other.ptr).all(|(a, b)| *a || !b)
            && self.r1_is_counter_map >= other.r1_is_counter_map
            && other.spilled.iter().all(|(off, p)| !p || self.spilled.get(off).copied().unwrap_or(false))
    }

    /// Either path's pointers: a register is one if it is one on any path.
    fn merge(&self, other: &State) -> State {
        let mut m = self.clone();
        for (a, b) in m.ptr.iter_mut().zip(other.ptr) {
            *a |= b;
        }
        for (off, p) in &other.spilled {
            *m.spilled.entry(*off).or_default() |= *p;
        }
        m.r1_is_counter_map |= other.r1_is_counter_map;
        m
    }
}

fn jump_target(i: usize, code: u8, off: i16, imm: i32) -> usize {
    let delta = if code == JA32 { i64::from(imm) } else { i64::from(off) };
    (i as i64 + 1 + delta) as usize
}

fn add_pending(pending: &mut BTreeMap<usize, State>, back: &mut BTreeMap<usize, State>, target: usize, st: &State, from: usize) {
    let pending = if target > from { pending } else { back };
    let merged = match pending.get(&target) {
        Some(p) => p.merge(st),
        None => st.clone(),
    };
    pending.insert(target, merged);
}

#[derive(Debug, Default)]
struct Scan {
    atomic_adds: usize,
    /// Plain stores (or non-add atomics) into a counter value: (section, insn index).
    plain_stores: Vec<(String, usize)>,
}

/// One instruction: opcode, dst and src registers, offset, immediate.
type Insn = (u8, u8, u8, i16, i32);

fn class(code: u8) -> u8 {
    code & 0x07
}

fn scan() -> Scan {
    let file = object::File::parse(EBPF_OBJECT).expect("the embedded object is ELF");
    let mut out = Scan::default();
    for section in file.sections() {
        let name = section.name().unwrap_or_default().to_string();
        if section.kind() != object::SectionKind::Text {
            continue;
        }
        let data = section.data().expect("section data");
        // ld_imm64 instructions (by index) that load the HITS or STATS map.
        let counter_maps: BTreeSet<usize> = section
            .relocations()
            .filter_map(|(offset, r)| match r.target() {
                RelocationTarget::Symbol(i) => {
                    let sym = file.symbol_by_index(i).ok()?;
                    let n = sym.name().ok()?;
                    (n == HITS || n == STATS).then_some(offset as usize / 8)
                }
                _ => None,
            })
            .collect();
        let insns: Vec<Insn> = data
            .chunks_exact(8)
            .map(|b| (b[0], b[1] & 0x0f, b[1] >> 4, i16::from_le_bytes([b[2], b[3]]), i32::from_le_bytes([b[4], b[5], b[6], b[7]])))
            .collect();
        // Loops (back edges) are iterated until the states at their heads settle.
        let mut heads: BTreeMap<usize, State> = BTreeMap::new();
        let mut settled = false;
        for _ in 0..32 {
            let (found, next_heads) = pass(&name, &insns, &counter_maps, &heads);
            if next_heads.iter().all(|(k, v)| heads.get(k).is_some_and(|h| h.covers(v))) {
                out.atomic_adds += found.atomic_adds;
                out.plain_stores.extend(found.plain_stores);
                settled = true;
                break;
            }
            for (k, v) in next_heads {
                let m = heads.get(&k).map_or_else(|| v.clone(), |h| h.merge(&v));
                heads.insert(k, m);
            }
        }
        assert!(settled, "section {name}: loop states did not settle");
    }
    out
}

/// One scan of a section with the given states at loop heads; returns what it
/// found and the states its back edges carry to their heads.
fn pass(name: &str, insns: &[Insn], counter_maps: &BTreeSet<usize>, heads: &BTreeMap<usize, State>) -> (Scan, BTreeMap<usize, State>) {
    let mut out = Scan::default();
    let mut back: BTreeMap<usize, State> = BTreeMap::new();
    // States carried by forward jumps to their targets.
    let mut pending: BTreeMap<usize, State> = BTreeMap::new();
    let mut st = State::default();
    let mut live = true;
    let mut i = 0;
    while i < insns.len() {
        // A loop head also has what its back edges carried in the last pass.
        if let Some(h) = heads.get(&i) {
            st = if live { st.merge(h) } else { h.clone() };
            live = true;
        }
        if let Some(p) = pending.remove(&i) {
            st = if live { st.merge(&p) } else { p };
            live = true;
        }
        if !live {
            // Unreachable by fallthrough and no jump lands here (yet): skip.
            st = State::default();
            live = true;
        }
        let (code, dst, src, off, imm) = insns[i];
        let (dst, src) = (usize::from(dst.min(10)), usize::from(src.min(10)));
        let mut next = i + 1;
        match code {
            LD_IMM64 => {
                st.ptr[dst] = false;
                if dst == 1 {
                    st.r1_is_counter_map = counter_maps.contains(&i);
                }
                next = i + 2;
            }
            CALL => {
                let lookup = src == 0 && imm == BPF_FUNC_MAP_LOOKUP_ELEM && st.r1_is_counter_map;
                st.ptr[..=5].fill(false);
                st.ptr[0] = lookup;
                st.r1_is_counter_map = false;
            }
            EXIT => live = false,
            JA | JA32 => {
                let target = jump_target(i, code, off, imm);
                add_pending(&mut pending, &mut back, target, &st, i);
                live = false;
            }
            MOV64_REG => st.ptr[dst] = st.ptr[src],
            ADD64_IMM => {}
            ADD64_REG => st.ptr[dst] |= st.ptr[src],
            _ => match class(code) {
                // Loads: a reload of a spilled pointer stays one.
                0x01 => st.ptr[dst] = src == usize::from(FP) && code == LDX_DW && st.spilled.get(&off).copied().unwrap_or(false),
                // Stores, plain (STX_MEM, ST imm) or atomic (mode 0xc0).
                0x02 | 0x03 => {
                    if code & 0xe0 == 0xc0 {
                        if st.ptr[dst] {
                            if imm == 0 {
                                out.atomic_adds += 1;
                            } else {
                                out.plain_stores.push((name.to_string(), i));
                            }
                        }
                    } else if dst == usize::from(FP) {
                        st.spilled.insert(off, code == STX_DW && st.ptr[src]);
                    } else if st.ptr[dst] {
                        out.plain_stores.push((name.to_string(), i));
                    }
                }
                // Conditional jumps: the target inherits this state.
                0x05 | 0x06 => add_pending(&mut pending, &mut back, jump_target(i, code, off, imm), &st, i),
                // Any other ALU result is not a pointer we track.
                _ => st.ptr[dst] = false,
            },
        }
        // r1 written by anything but the map load: no longer the map.
        if dst == 1 && matches!(class(code), 0x00 | 0x01 | 0x04 | 0x07) && code != LD_IMM64 {
            st.r1_is_counter_map = false;
        }
        i = next;
    }
    (out, back)
}

#[test]
fn counters_are_changed_by_atomic_adds_only() {
    let s = scan();
    assert!(s.plain_stores.is_empty(), "plain stores into HITS/STATS values (section, instruction): {:?}", s.plain_stores);
    // Every family bumps a hit counter and most a stats counter: far more than one site.
    assert!(s.atomic_adds >= 20, "only {} atomic adds into HITS/STATS found: is the scan still seeing the lookups?", s.atomic_adds);
}
