//! A kernel's BTF cut down to what the daemon reads, for the unit tests' test
//! data (`cargo xtask btf-testdata`, through [`crate::kernel::minimize_btf`]):
//! the types lookups found (structs the layout reads, enums with the
//! enumerators it reads, tracepoint typedefs, functions), everything they
//! refer to, and anonymous structs and unions in full (a field search walks
//! into them), but a named struct or union no lookup found only as a forward
//! declaration. Ids change; names, offsets and values do not.
use std::collections::{BTreeSet, HashMap};

use super::*;

impl Btf<'_> {
    /// The minimized BTF (24-byte header, types, strings).
    pub fn minimized(&self) -> Result<Vec<u8>, String> {
        if self.partial.is_some() || !self.skipped.is_empty() {
            return Err(self.missing("BTF read only in part cannot be minimized".into()));
        }
        let roots: BTreeSet<u32> = self.read.borrow().clone();
        let (mut full, mut fwd) = (BTreeSet::new(), BTreeSet::new());
        let mut todo: Vec<u32> = roots.iter().copied().collect();
        while let Some(id) = todo.pop() {
            if id == 0 || full.contains(&id) || fwd.contains(&id) {
                continue;
            }
            let t = self.get(id).ok_or_else(|| format!("type {id} referred to but not in the BTF"))?;
            if matches!(t.kind, KIND_STRUCT | KIND_UNION) && !t.name.is_empty() && !roots.contains(&id) {
                fwd.insert(id);
                continue;
            }
            full.insert(id);
            todo.extend(self.refers_to(t).into_iter().map(|(_, id)| id));
        }
        let new_id: HashMap<u32, u32> =
            full.union(&fwd).enumerate().map(|(i, id)| (*id, i as u32 + 1)).chain([(0, 0)]).collect();
        let (t0, _) = self.type_section;
        let (s0, s1) = self.string_section;
        let strings_in = &self.data[s0..s1];
        let mut strings = vec![0u8];
        let mut string_at: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut name = |off: u32| -> u32 {
            let s = strings_in[off as usize..].split(|b| *b == 0).next().unwrap_or_default();
            if s.is_empty() {
                return 0;
            }
            *string_at.entry(s.to_vec()).or_insert_with(|| {
                let at = strings.len() as u32;
                strings.extend_from_slice(s);
                strings.push(0);
                at
            })
        };
        let mut types = Vec::new();
        for id in full.union(&fwd) {
            let t = &self.types[*id as usize];
            let (start, end) = (t0 + t.bytes.0 as usize, t0 + t.bytes.1 as usize);
            let mut raw = self.data[start..end].to_vec();
            let name_off = name(u32_at(&raw, 0));
            if fwd.contains(id) {
                let union = if t.kind == KIND_UNION { 1 << 31 } else { 0 };
                for word in [name_off, KIND_FWD << 24 | union, 0] {
                    types.extend(word.to_le_bytes());
                }
                continue;
            }
            put(&mut raw, 0, name_off);
            for (at, old) in self.refers_to(t) {
                put(&mut raw, at, new_id[&old]);
            }
            // Member, parameter and enumerator names.
            let vlen = (u32_at(&raw, 4) & 0xff_ffff) as usize;
            let step = match t.kind {
                KIND_STRUCT | KIND_UNION | KIND_ENUM64 => 12,
                KIND_ENUM | KIND_FUNC_PROTO => 8,
                _ => 0,
            };
            for i in 0..if step == 0 { 0 } else { vlen } {
                let at = 12 + i * step;
                let n = name(u32_at(&raw, at));
                put(&mut raw, at, n);
            }
            types.extend(raw);
        }
        let mut out = Vec::with_capacity(HEADER + types.len() + strings.len());
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for word in [HEADER as u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend(word.to_le_bytes());
        }
        out.extend(types);
        out.extend(strings);
        Ok(out)
    }

    /// The type ids `t` refers to: (byte position in its bytes, id).
    fn refers_to(&self, t: &Type) -> Vec<(usize, u32)> {
        let (t0, _) = self.type_section;
        let raw = &self.data[t0 + t.bytes.0 as usize..t0 + t.bytes.1 as usize];
        let vlen = (u32_at(raw, 4) & 0xff_ffff) as usize;
        match t.kind {
            KIND_PTR | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG | KIND_FUNC
            | KIND_VAR => vec![(8, u32_at(raw, 8))],
            KIND_ARRAY => vec![(12, u32_at(raw, 12)), (16, u32_at(raw, 16))],
            KIND_STRUCT | KIND_UNION => (0..vlen).map(|i| (16 + i * 12, u32_at(raw, 16 + i * 12))).collect(),
            KIND_FUNC_PROTO => std::iter::once((8, u32_at(raw, 8)))
                .chain((0..vlen).map(|i| (16 + i * 8, u32_at(raw, 16 + i * 8))))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn put(raw: &mut [u8], at: usize, v: u32) {
    raw[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
