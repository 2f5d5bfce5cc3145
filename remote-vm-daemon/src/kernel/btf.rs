//! A reader for the kernel's BTF, enough to find struct field offsets, enum
//! values, functions and tracepoint prototypes of the *running* kernel.
//!
//! Rust eBPF cannot emit CO-RE relocations, so every kernel struct offset the
//! programs need comes from here and is handed to them as a global at load time.
use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BtfError {
    #[error("not BTF (bad magic {0:#06x})")]
    Magic(u16),
    #[error("truncated BTF ({0})")]
    Truncated(&'static str),
    #[error("unknown BTF kind {0}")]
    Kind(u32),
}

pub const KIND_INT: u32 = 1;
pub const KIND_PTR: u32 = 2;
pub const KIND_ARRAY: u32 = 3;
pub const KIND_STRUCT: u32 = 4;
pub const KIND_UNION: u32 = 5;
pub const KIND_ENUM: u32 = 6;
pub const KIND_FWD: u32 = 7;
pub const KIND_TYPEDEF: u32 = 8;
pub const KIND_VOLATILE: u32 = 9;
pub const KIND_CONST: u32 = 10;
pub const KIND_RESTRICT: u32 = 11;
pub const KIND_FUNC: u32 = 12;
pub const KIND_FUNC_PROTO: u32 = 13;
pub const KIND_VAR: u32 = 14;
pub const KIND_DATASEC: u32 = 15;
pub const KIND_FLOAT: u32 = 16;
pub const KIND_DECL_TAG: u32 = 17;
pub const KIND_TYPE_TAG: u32 = 18;
pub const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    pub bit_offset: u32,
}

#[derive(Debug, Clone)]
pub struct Type {
    pub kind: u32,
    pub name: String,
    /// `size` for INT/STRUCT/UNION/ENUM/DATASEC, else the referenced `type`.
    pub size_or_type: u32,
    /// STRUCT/UNION members, FUNC_PROTO params (bit_offset 0).
    pub members: Vec<Member>,
    /// ENUM/ENUM64 enumerators.
    pub enumerators: Vec<(String, i64)>,
}

/// Parsed BTF: types by id (id 0 is `void`).
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<(u32, String), Vec<u32>>,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, BtfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(BtfError::Truncated("u16"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated("u32"))
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let magic = u16_at(data, 0)?;
        if magic != 0xeb9f {
            return Err(BtfError::Magic(magic));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let strs_start = hdr_len + str_off;
        let types_bytes = data
            .get(types_start..types_start + type_len)
            .ok_or(BtfError::Truncated("type section"))?;
        let strings = data
            .get(strs_start..strs_start + str_len)
            .ok_or(BtfError::Truncated("string section"))?;
        let name = |off: u32| -> String {
            let off = off as usize;
            strings
                .get(off..)
                .and_then(|s| s.split(|b| *b == 0).next())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default()
        };
        let mut types = vec![Type {
            kind: 0,
            name: "void".into(),
            size_or_type: 0,
            members: Vec::new(),
            enumerators: Vec::new(),
        }];
        let mut pos = 0usize;
        while pos < types_bytes.len() {
            let name_off = u32_at(types_bytes, pos)?;
            let info = u32_at(types_bytes, pos + 4)?;
            let size_or_type = u32_at(types_bytes, pos + 8)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut t = Type {
                kind,
                name: name(name_off),
                size_or_type,
                members: Vec::new(),
                enumerators: Vec::new(),
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => pos += 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
                | KIND_FLOAT | KIND_TYPE_TAG => {}
                KIND_ARRAY => pos += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let at = pos + i * 12;
                        let offset = u32_at(types_bytes, at + 8)?;
                        t.members.push(Member {
                            name: name(u32_at(types_bytes, at)?),
                            type_id: u32_at(types_bytes, at + 4)?,
                            bit_offset: if kind_flag { offset & 0xff_ffff } else { offset },
                        });
                    }
                    pos += vlen * 12;
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let at = pos + i * 8;
                        let v = u32_at(types_bytes, at + 4)?;
                        let v = if kind_flag { i64::from(v as i32) } else { i64::from(v) };
                        t.enumerators.push((name(u32_at(types_bytes, at)?), v));
                    }
                    pos += vlen * 8;
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let at = pos + i * 12;
                        let lo = u64::from(u32_at(types_bytes, at + 4)?);
                        let hi = u64::from(u32_at(types_bytes, at + 8)?);
                        t.enumerators.push((name(u32_at(types_bytes, at)?), ((hi << 32) | lo) as i64));
                    }
                    pos += vlen * 12;
                }
                KIND_FUNC_PROTO => {
                    for i in 0..vlen {
                        let at = pos + i * 8;
                        t.members.push(Member {
                            name: name(u32_at(types_bytes, at)?),
                            type_id: u32_at(types_bytes, at + 4)?,
                            bit_offset: 0,
                        });
                    }
                    pos += vlen * 8;
                }
                KIND_DATASEC => pos += vlen * 12,
                other => return Err(BtfError::Kind(other)),
            }
            types.push(t);
        }
        let mut by_name: HashMap<(u32, String), Vec<u32>> = HashMap::new();
        for (id, t) in types.iter().enumerate().skip(1) {
            if !t.name.is_empty() {
                by_name.entry((t.kind, t.name.clone())).or_default().push(id as u32);
            }
        }
        Ok(Btf { types, by_name })
    }

    #[cfg(test)]
    pub fn from_file(path: &std::path::Path) -> Result<Btf, String> {
        let data = std::fs::read(path).map_err(|e| e.to_string())?;
        Btf::parse(&data).map_err(|e| e.to_string())
    }

    pub fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    pub fn find(&self, kind: u32, name: &str) -> Option<u32> {
        self.by_name
            .get(&(kind, name.to_string()))
            .and_then(|ids| ids.first().copied())
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.find(KIND_FUNC, name).is_some()
    }

    /// Skips typedefs and qualifiers.
    pub fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `field` in `struct name`, looking into anonymous struct and
    /// union members the way C does.
    pub fn field_offset(&self, struct_name: &str, field: &str) -> Result<u64, String> {
        let id = self
            .find(KIND_STRUCT, struct_name)
            .ok_or_else(|| format!("struct {struct_name} not in BTF"))?;
        self.member_bits(id, field, 0)
            .and_then(|(bits, _)| (bits % 8 == 0).then_some(u64::from(bits / 8)))
            .ok_or_else(|| format!("struct {struct_name} has no field {field} in BTF"))
    }

    /// `(bit offset, type id)` of `field` in the struct/union `id`.
    fn member_bits(&self, id: u32, field: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let t = self.get(self.resolve(id))?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return None;
        }
        for m in &t.members {
            if m.name == field {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in t.members.iter().filter(|m| m.name.is_empty()) {
            if let Some((bits, ty)) = self.member_bits(m.type_id, field, depth + 1) {
                return Some((m.bit_offset + bits, ty));
            }
        }
        None
    }

    /// The value of the enumerator `name` (any enum).
    pub fn enum_value(&self, name: &str) -> Result<i64, String> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_ENUM || t.kind == KIND_ENUM64)
            .flat_map(|t| t.enumerators.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("enumerator {name} not in BTF"))
    }

    /// The parameters a tp_btf program sees for tracepoint `tp`: the prototype of
    /// `btf_trace_<tp>` without its leading `void *__data`. Each entry is the
    /// resolved type of one argument.
    pub fn tracepoint_args(&self, tp: &str) -> Result<Vec<&Type>, String> {
        let typedef = self
            .find(KIND_TYPEDEF, &format!("btf_trace_{tp}"))
            .ok_or_else(|| format!("tracepoint {tp} not in BTF"))?;
        let ptr = self.get(self.resolve(typedef)).ok_or("bad typedef")?;
        let proto = self
            .get(self.resolve(ptr.size_or_type))
            .filter(|t| t.kind == KIND_FUNC_PROTO)
            .ok_or_else(|| format!("btf_trace_{tp} is not a function pointer"))?;
        Ok(proto
            .members
            .iter()
            .skip(1)
            .filter_map(|p| self.get(self.resolve(p.type_id)))
            .collect())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Builds a small BTF blob by hand, the way the kernel lays it out.
    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub fn new() -> Builder {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn head(&mut self, name: &str, kind: u32, vlen: u32, flag: bool, size_or_type: u32) -> u32 {
            let n = self.s(name);
            self.types.extend(n.to_le_bytes());
            self.types
                .extend((vlen | (kind << 24) | (u32::from(flag) << 31)).to_le_bytes());
            self.types.extend(size_or_type.to_le_bytes());
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, false, size);
            self.types.extend((size * 8).to_le_bytes());
            id
        }

        pub fn ptr(&mut self, to: u32) -> u32 {
            self.head("", KIND_PTR, 0, false, to)
        }

        pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.head(name, KIND_TYPEDEF, 0, false, to)
        }

        pub fn func(&mut self, name: &str, proto: u32) -> u32 {
            self.head(name, KIND_FUNC, 0, false, proto)
        }

        /// `members`: (name, type, bit offset).
        pub fn structure(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let id = self.head(name, kind, members.len() as u32, false, size);
            for (n, t, off) in members {
                let n = self.s(n);
                self.types.extend(n.to_le_bytes());
                self.types.extend(t.to_le_bytes());
                self.types.extend(off.to_le_bytes());
            }
            id
        }

        pub fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
            let id = self.head(name, KIND_ENUM, values.len() as u32, true, 4);
            for (n, v) in values {
                let n = self.s(n);
                self.types.extend(n.to_le_bytes());
                self.types.extend(v.to_le_bytes());
            }
            id
        }

        pub fn proto(&mut self, ret: u32, params: &[u32]) -> u32 {
            let id = self.head("", KIND_FUNC_PROTO, params.len() as u32, false, ret);
            for p in params {
                self.types.extend(0u32.to_le_bytes());
                self.types.extend(p.to_le_bytes());
            }
            id
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend(0xeb9fu16.to_le_bytes());
            out.push(1);
            out.push(0);
            out.extend(24u32.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend((self.types.len() as u32).to_le_bytes());
            out.extend((self.types.len() as u32).to_le_bytes());
            out.extend((self.strings.len() as u32).to_le_bytes());
            out.extend(&self.types);
            out.extend(&self.strings);
            out
        }
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let rwsem = b.structure(KIND_STRUCT, "rw_semaphore", 40, &[("count", int, 0)]);
        let anon = b.structure(KIND_STRUCT, "", 200, &[("mm_users", int, 0), ("mmap_lock", rwsem, 1024)]);
        b.structure(KIND_STRUCT, "mm_struct", 300, &[("", anon, 64), ("tail", int, 2048)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.field_offset("mm_struct", "mmap_lock"), Ok(136));
        assert_eq!(btf.field_offset("mm_struct", "tail"), Ok(256));
        assert_eq!(
            btf.field_offset("mm_struct", "nope"),
            Err("struct mm_struct has no field nope in BTF".to_string())
        );
        assert_eq!(
            btf.field_offset("task_struct", "mm"),
            Err("struct task_struct not in BTF".to_string())
        );
    }

    #[test]
    fn reads_enums_functions_and_tracepoint_args() {
        let mut b = Builder::new();
        let boolean = b.int("_Bool", 1);
        let bool_t = b.typedef("bool", boolean);
        let void_ptr = b.ptr(0);
        let char_t = b.int("char", 1);
        let char_ptr = b.ptr(char_t);
        b.enumeration("", &[("FOLL_WRITE", 1), ("FOLL_ANON", 128)]);
        let proto = b.proto(0, &[void_ptr, void_ptr, char_ptr, bool_t]);
        let fptr = b.ptr(proto);
        b.typedef("btf_trace_mmap_lock_start_locking", fptr);
        b.func("lock_vma_under_rcu", proto);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.enum_value("FOLL_ANON"), Ok(128));
        assert!(btf.has_function("lock_vma_under_rcu"));
        assert!(!btf.has_function("folio_walk_start"));
        let args = btf.tracepoint_args("mmap_lock_start_locking").unwrap();
        let names: Vec<_> = args.iter().map(|t| (t.kind, t.name.as_str())).collect();
        assert_eq!(names, vec![(KIND_PTR, ""), (KIND_PTR, ""), (KIND_INT, "_Bool")]);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Btf::parse(b"hello world, not btf at all").err(), Some(BtfError::Magic(0x6568)));
        assert_eq!(Btf::parse(&[0x9f, 0xeb]).err(), Some(BtfError::Truncated("u32")));
    }

    #[test]
    fn reads_the_running_kernels_btf() {
        // The host's own BTF: the offsets the daemon hands to its programs.
        let btf = Btf::from_file(std::path::Path::new("/sys/kernel/btf/vmlinux")).unwrap();
        assert!(btf.field_offset("mm_struct", "mmap_lock").is_ok());
        assert!(btf.field_offset("task_struct", "mm").is_ok());
        assert_eq!(btf.enum_value("FOLL_WRITE"), Ok(1));
    }
}
