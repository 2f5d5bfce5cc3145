//! A reader for the kernel's BTF, enough to find struct field offsets, enum
//! values, functions and tracepoint prototypes of the *running* kernel.
//!
//! Rust eBPF cannot emit CO-RE relocations, so every kernel struct offset the
//! programs need comes from here and is handed to them as a global at load time.
//!
//! A `--btf` file is input like any other, so everything here is bounded:
//! - reading (`read_file`): regular files only (a FIFO, a device such as
//!   /dev/zero or a directory is refused before anything is read), at most
//!   [`MAX_FILE`] bytes, and never more than that plus one is read;
//! - parsing: one pass; names are borrowed from the string section, never
//!   copied, and run to their NUL within it, [`MAX_NAME`] bytes at most; a
//!   count (vlen) is checked against the bytes left before anything is
//!   allocated for it; at most [`MAX_TYPES`] types. Memory stays within a few
//!   times the file;
//! - lookups: a walk through anonymous members searches each struct at most
//!   once per nesting level ([`MAX_NESTING`] levels), so a struct that contains
//!   itself, or unions that contain each other, end, and it gives up after
//!   [`MAX_WALK`] members; typedef and qualifier chains are followed 32 steps
//!   at most.
//!
//! What a kernel's BTF can hold that this reader does not know degrades instead
//! of failing: a kind added after this was written (`KIND_ENUM64` is the last
//! one known) is skipped with the layout section that BTF can carry from Linux 7.1
//! on (`btf_header.layout_off`/`layout_len`: one `struct btf_layout` per kind,
//! the size of each kind's data), and without one the parse stops there and the
//! types read so far stay usable ([`Btf::partial`] says why). Lookups that then
//! fail say so in their reason, which `check` shows as an unknown offset.
//! Everything else that no kernel would accept (a name past the string section,
//! a count larger than the bytes left, a section past the end of the file) is
//! rejected with one reason.
use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    io::Read,
    path::Path,
};

use super::BtfReadError;

mod minimize;

/// The largest BTF file taken. A kernel's is 5–6 MiB (this project's 6.18 host:
/// 5.3 MiB; the 7.3 test image: 2.8 MiB): ten times that and more.
pub const MAX_FILE: u64 = 64 << 20;
/// The longest name taken, without its NUL: twice KSYM_NAME_LEN (512), the
/// kernel's own limit for identifiers and section names in BTF (the 6.18
/// host's longest type name: 73). Tags (DECL_TAG, TYPE_TAG), whose text the
/// kernel does not limit and this reader does not use, are not held to it.
pub const MAX_NAME: usize = 1024;
/// The most types a BTF can have (the kernel's BTF_MAX_TYPE).
pub const MAX_TYPES: u32 = 0x000f_ffff;
/// How deep anonymous members are searched for a field. The kernel's structs
/// nest six levels at most (6.18).
pub const MAX_NESTING: u32 = 16;
/// How many members one field search looks at, at most. The daemon's largest
/// (`task_struct` with its anonymous members) looks at 248 on 6.18.
pub const MAX_WALK: u32 = 100_000;

const MAGIC: u16 = 0xeb9f;
/// `struct btf_header` up to `str_len`; from Linux 7.1 on `layout_off` and
/// `layout_len` follow (32 bytes).
const HEADER: usize = 24;
const HEADER_WITH_LAYOUT: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BtfError {
    #[error("not BTF (bad magic {0:#06x})")]
    Magic(u16),
    #[error("truncated BTF ({0})")]
    Truncated(String),
    #[error("bad BTF header ({0})")]
    Header(String),
    #[error("bad BTF string section ({0})")]
    Strings(&'static str),
    #[error("bad BTF type {id}: {what}")]
    Type { id: u32, what: String },
    #[error("more than {MAX_TYPES} BTF types (the kernel's limit, BTF_MAX_TYPE)")]
    TooManyTypes,
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    #[error("larger than {} MiB, which no kernel's BTF is", MAX_FILE >> 20)]
    TooLarge,
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

/// The bytes after the 12-byte `struct btf_type` of a kind this reader knows:
/// (a fixed part, the size of each of vlen elements), as a layout section
/// would say them.
fn known_layout(kind: u32) -> Option<(u32, u32)> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => (4, 0),
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC | KIND_FLOAT
        | KIND_TYPE_TAG => (0, 0),
        KIND_ARRAY => (12, 0),
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => (0, 12),
        KIND_ENUM | KIND_FUNC_PROTO => (0, 8),
        _ => return None,
    })
}

/// Reads a BTF file for [`Btf::parse`]: a regular file of at most [`MAX_FILE`]
/// bytes. Anything else is refused before it is read (a FIFO is opened without
/// waiting for a writer), and no more than `MAX_FILE + 1` bytes are read even
/// from a file that grows or lies about its size.
pub fn read_file(path: &Path) -> Result<Vec<u8>, BtfReadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // The file opened, not the path: nothing can be swapped in between.
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(BtfError::NotRegular(what).into());
    }
    if meta.len() > MAX_FILE {
        return Err(BtfError::TooLarge.into());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(BtfError::TooLarge.into());
    }
    Ok(bytes)
}

/// One field search: each struct searched with the shallowest depth it was
/// searched at (searching it again no shallower finds nothing new, so cycles
/// end and each struct is searched at most `MAX_NESTING + 1` times), and how
/// many more members it may look at.
struct Walk {
    searched: HashMap<u32, u32>,
    left: u32,
}

#[derive(Debug, Clone)]
pub struct Member<'a> {
    pub name: &'a str,
    pub type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    pub bit_offset: u32,
}

#[derive(Debug, Clone)]
pub struct Type<'a> {
    /// The BTF kind; a kind this reader does not know is kept (with no name,
    /// members or enumerators) so that later ids stay right.
    pub kind: u32,
    pub name: &'a str,
    /// `size` for INT/STRUCT/UNION/ENUM/DATASEC, else the referenced `type`.
    pub size_or_type: u32,
    /// STRUCT/UNION members, FUNC_PROTO params (bit_offset 0).
    pub members: Vec<Member<'a>>,
    /// ENUM/ENUM64 enumerators.
    pub enumerators: Vec<(&'a str, i64)>,
    /// Its bytes in the type section (header and data), for [`Btf::minimized`].
    pub(super) bytes: (u32, u32),
}

/// Parsed BTF: types by id (id 0 is `void`), borrowing the file's bytes.
pub struct Btf<'a> {
    data: &'a [u8],
    types: Vec<Type<'a>>,
    /// The first id of each (kind, name).
    by_name: HashMap<(u32, &'a str), u32>,
    /// Why the types were read only in part: a kind this reader does not know
    /// and no layout section to skip it. The types before it are usable.
    pub partial: Option<String>,
    /// Types skipped with the layout section: their byte ranges in the type
    /// section, and their kinds.
    skipped: Vec<(usize, usize)>,
    skipped_kinds: BTreeSet<u32>,
    /// Where the type section's types parsed end, the type and string sections.
    parsed_end: usize,
    type_section: (usize, usize),
    string_section: (usize, usize),
    /// The ids lookups found: what the daemon reads ([`Btf::minimized`] keeps them).
    pub(super) read: std::cell::RefCell<BTreeSet<u32>>,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The bytes `[hdr_len + off, + len)` of the file, or why not.
fn section(data: &[u8], hdr_len: usize, off: u32, len: u32, what: &str) -> Result<(usize, usize), BtfError> {
    // In u64: three u32 cannot overflow it.
    let start = hdr_len as u64 + u64::from(off);
    let end = start + u64::from(len);
    if end > data.len() as u64 {
        return Err(BtfError::Truncated(format!(
            "the {what} section ends at byte {end}, past the end of the file at {}",
            data.len()
        )));
    }
    Ok((start as usize, end as usize))
}

/// The name at `off` in the string section: up to its NUL, at most
/// [`MAX_NAME`] bytes, UTF-8.
fn name_at(strings: &[u8], off: u32) -> Result<&str, String> {
    let rest = strings.get(off as usize..).filter(|r| !r.is_empty()).ok_or_else(|| {
        format!(
            "name offset {off} is past the string section ({} bytes)",
            strings.len()
        )
    })?;
    // The search is bounded, and `CStr`'s (libcore's memchr) is fast.
    let window = &rest[..rest.len().min(MAX_NAME + 1)];
    let name = std::ffi::CStr::from_bytes_until_nul(window)
        .map_err(|_| format!("the name at string offset {off} is longer than {MAX_NAME} bytes"))?;
    name.to_str().map_err(|_| format!("the name at string offset {off} is not UTF-8"))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Btf<'a>, BtfError> {
        if data.len() as u64 > MAX_FILE {
            return Err(BtfError::TooLarge);
        }
        if data.len() >= 2 && u16_at(data, 0) != MAGIC {
            return Err(BtfError::Magic(u16_at(data, 0)));
        }
        if data.len() < HEADER {
            return Err(BtfError::Truncated(format!(
                "{} bytes, shorter than a {HEADER}-byte header",
                data.len()
            )));
        }
        let hdr_len = u32_at(data, 4) as usize;
        if hdr_len < HEADER {
            return Err(BtfError::Header(format!("hdr_len {hdr_len}, at least {HEADER}")));
        }
        if hdr_len > data.len() {
            return Err(BtfError::Truncated(format!(
                "a {hdr_len}-byte header in a {}-byte file",
                data.len()
            )));
        }
        let type_section = section(data, hdr_len, u32_at(data, 8), u32_at(data, 12), "type")?;
        let string_section = section(data, hdr_len, u32_at(data, 16), u32_at(data, 20), "string")?;
        // The layout section (Linux 7.1 on): `struct btf_layout { u8 info_sz;
        // u8 elem_sz; u16 flags; }` for each kind, indexed by kind: a type of
        // that kind takes 12 + info_sz + vlen * elem_sz bytes. As in 7.1's
        // include/uapi/linux/btf.h and its selftest btf_sanitize_layout (the
        // section between types and strings); `flags` is "currently unused"
        // there and ignored here. Not yet seen in a kernel's own BTF: the 7.3
        // test images have 24-byte headers.
        let mut layout: &[u8] = &[];
        if hdr_len >= HEADER_WITH_LAYOUT {
            let (off, len) = (u32_at(data, 24), u32_at(data, 28));
            if len % 4 != 0 {
                return Err(BtfError::Header(format!(
                    "a {len}-byte layout section, not a whole number of 4-byte entries"
                )));
            }
            let (start, end) = section(data, hdr_len, off, len, "layout")?;
            layout = &data[start..end];
        }
        let types_bytes = &data[type_section.0..type_section.1];
        let strings = &data[string_section.0..string_section.1];
        // As the kernel checks: names end within the section.
        match strings {
            [] => return Err(BtfError::Strings("empty")),
            [first, ..] if *first != 0 => return Err(BtfError::Strings("its first byte is not NUL")),
            [.., last] if *last != 0 => {
                return Err(BtfError::Strings(
                    "its last byte is not NUL: names would run past its end",
                ));
            }
            _ => {}
        }
        let mut btf = Btf {
            data,
            types: vec![Type {
                kind: 0,
                name: "void",
                size_or_type: 0,
                members: Vec::new(),
                enumerators: Vec::new(),
                bytes: (0, 0),
            }],
            by_name: HashMap::new(),
            partial: None,
            skipped: Vec::new(),
            skipped_kinds: BTreeSet::new(),
            parsed_end: 0,
            type_section,
            string_section,
            read: Default::default(),
        };
        let mut pos = 0usize;
        while pos < types_bytes.len() {
            let id = btf.types.len() as u32;
            if id > MAX_TYPES {
                return Err(BtfError::TooManyTypes);
            }
            let bad = |what: String| BtfError::Type { id, what };
            let left = types_bytes.len() - pos;
            if left < 12 {
                return Err(bad(format!("truncated: {left} bytes left in the type section, a type takes 12 or more")));
            }
            let name_off = u32_at(types_bytes, pos);
            let info = u32_at(types_bytes, pos + 4);
            let size_or_type = u32_at(types_bytes, pos + 8);
            // 7.1's encoding: kind in bits 24–30, vlen in bits 0–23 (before,
            // bits 29–30 and 16–23 were unused, that is 0).
            let kind = (info >> 24) & 0x7f;
            let vlen = info & 0xff_ffff;
            let kind_flag = info >> 31 == 1;
            let from_layout = (layout.len() / 4 > kind as usize).then(|| {
                let at = kind as usize * 4;
                (u32::from(layout[at]), u32::from(layout[at + 1]))
            });
            let known = known_layout(kind);
            // A known kind is decoded only if the layout section (if any)
            // agrees on its size; else it is skipped like an unknown one.
            let decode = known.is_some() && from_layout.is_none_or(|l| Some(l) == known);
            let Some((fixed, elem)) = (if decode { known } else { from_layout }) else {
                btf.partial = Some(format!(
                    "unknown BTF kind {kind} at type {id} and {}: types from {id} on not read",
                    if layout.is_empty() {
                        "no layout section to skip it".to_string()
                    } else {
                        format!("the layout section describes kinds 0 to {} only", layout.len() / 4 - 1)
                    }
                ));
                break;
            };
            let needed = u64::from(fixed) + u64::from(vlen) * u64::from(elem);
            if needed > (left - 12) as u64 {
                return Err(bad(format!(
                    "kind {kind} with vlen {vlen} needs {needed} bytes after its header, the type section has {} left",
                    left - 12
                )));
            }
            let body = pos + 12;
            let end = body + needed as usize;
            pos = end;
            if !decode {
                btf.skipped.push((body - 12, end));
                btf.skipped_kinds.insert(kind);
                btf.types.push(Type {
                    kind,
                    name: "",
                    size_or_type,
                    members: Vec::new(),
                    enumerators: Vec::new(),
                    bytes: ((body - 12) as u32, end as u32),
                });
                continue;
            }
            let name = |off: u32, what: &str| {
                name_at(strings, off).map_err(|e| BtfError::Type {
                    id,
                    what: format!("{what}{e}"),
                })
            };
            let mut t = Type {
                kind,
                name: match kind {
                    KIND_DECL_TAG | KIND_TYPE_TAG => name_at(strings, name_off).unwrap_or(""),
                    _ => name(name_off, "")?,
                },
                size_or_type,
                members: Vec::new(),
                enumerators: Vec::new(),
                bytes: ((body - 12) as u32, end as u32),
            };
            let vlen = vlen as usize;
            match kind {
                KIND_STRUCT | KIND_UNION => {
                    t.members.reserve_exact(vlen);
                    for i in 0..vlen {
                        let at = body + i * 12;
                        let offset = u32_at(types_bytes, at + 8);
                        t.members.push(Member {
                            name: name(u32_at(types_bytes, at), &format!("member {i}: "))?,
                            type_id: u32_at(types_bytes, at + 4),
                            bit_offset: if kind_flag { offset & 0xff_ffff } else { offset },
                        });
                    }
                }
                KIND_ENUM => {
                    t.enumerators.reserve_exact(vlen);
                    for i in 0..vlen {
                        let at = body + i * 8;
                        let v = u32_at(types_bytes, at + 4);
                        let v = if kind_flag { i64::from(v as i32) } else { i64::from(v) };
                        t.enumerators
                            .push((name(u32_at(types_bytes, at), &format!("enumerator {i}: "))?, v));
                    }
                }
                KIND_ENUM64 => {
                    t.enumerators.reserve_exact(vlen);
                    for i in 0..vlen {
                        let at = body + i * 12;
                        let lo = u64::from(u32_at(types_bytes, at + 4));
                        let hi = u64::from(u32_at(types_bytes, at + 8));
                        t.enumerators.push((
                            name(u32_at(types_bytes, at), &format!("enumerator {i}: "))?,
                            ((hi << 32) | lo) as i64,
                        ));
                    }
                }
                KIND_FUNC_PROTO => {
                    t.members.reserve_exact(vlen);
                    for i in 0..vlen {
                        let at = body + i * 8;
                        t.members.push(Member {
                            name: name(u32_at(types_bytes, at), &format!("parameter {i}: "))?,
                            type_id: u32_at(types_bytes, at + 4),
                            bit_offset: 0,
                        });
                    }
                }
                _ => {}
            }
            btf.types.push(t);
        }
        btf.parsed_end = pos.min(types_bytes.len());
        for (id, t) in btf.types.iter().enumerate().skip(1) {
            if !t.name.is_empty() {
                btf.by_name.entry((t.kind, t.name)).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    /// Why a lookup found nothing, with what this BTF could not read.
    fn missing(&self, what: String) -> String {
        match (&self.partial, self.skipped.len()) {
            (Some(why), _) => format!("{what}; {why}"),
            (None, 0) => what,
            (None, n) => format!(
                "{what}; {n} {} skipped, of kinds this reader does not know: {}",
                if n == 1 { "type" } else { "types" },
                self.skipped_kinds.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The bytes for aya's parser, which stops at a kind it does not know: the
    /// file itself, or where this reader skipped types or stopped early, a copy
    /// with a 24-byte header in which each skipped type is a `const void` (so
    /// every later type keeps its id, which is what the kernel knows it by) and
    /// the types not read are left out.
    pub fn for_aya(&self) -> Cow<'a, [u8]> {
        if self.partial.is_none() && self.skipped.is_empty() {
            return Cow::Borrowed(self.data);
        }
        let (t0, _) = self.type_section;
        let (s0, s1) = self.string_section;
        let mut types = Vec::with_capacity(self.parsed_end);
        let mut at = 0;
        for &(start, end) in &self.skipped {
            types.extend_from_slice(&self.data[t0 + at..t0 + start]);
            types.extend(0u32.to_le_bytes());
            types.extend((KIND_CONST << 24).to_le_bytes());
            types.extend(0u32.to_le_bytes());
            at = end;
        }
        types.extend_from_slice(&self.data[t0 + at..t0 + self.parsed_end]);
        let mut out = Vec::with_capacity(HEADER + types.len() + s1 - s0);
        out.extend_from_slice(&self.data[..4]);
        out.extend((HEADER as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend(((s1 - s0) as u32).to_le_bytes());
        out.extend(types);
        out.extend_from_slice(&self.data[s0..s1]);
        Cow::Owned(out)
    }

    #[cfg(test)]
    pub fn from_file(path: &std::path::Path) -> Result<Btf<'static>, String> {
        let data = read_file(path).map_err(|e| e.to_string())?;
        Btf::parse(data.leak()).map_err(|e| e.to_string())
    }

    pub fn get(&self, id: u32) -> Option<&Type<'a>> {
        self.types.get(id as usize)
    }

    pub fn find(&self, kind: u32, name: &str) -> Option<u32> {
        let id = self.by_name.get(&(kind, name)).copied();
        if let Some(id) = id {
            self.read.borrow_mut().insert(id);
        }
        id
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.find(KIND_FUNC, name).is_some()
    }

    /// Skips typedefs and qualifiers, 32 at most (a chain that loops ends there,
    /// on a typedef, which is no struct).
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
            .ok_or_else(|| self.missing(format!("struct {struct_name} not in BTF")))?;
        let mut walk = Walk {
            searched: HashMap::new(),
            left: MAX_WALK,
        };
        match self.member_bits(id, field, 0, &mut walk) {
            Some((bits, _)) if bits % 8 == 0 => Ok(u64::from(bits / 8)),
            None if walk.left == 0 => Err(self.missing(format!(
                "struct {struct_name}: field {field} not found in the first {MAX_WALK} members searched"
            ))),
            _ => Err(self.missing(format!("struct {struct_name} has no field {field} in BTF"))),
        }
    }

    /// `(bit offset, type id)` of `field` in the struct/union `id`.
    fn member_bits(&self, id: u32, field: &str, depth: u32, walk: &mut Walk) -> Option<(u32, u32)> {
        if depth > MAX_NESTING {
            return None;
        }
        let id = self.resolve(id);
        if walk.searched.get(&id).is_some_and(|d| *d <= depth) {
            return None;
        }
        walk.searched.insert(id, depth);
        let t = self.get(id)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return None;
        }
        for m in &t.members {
            walk.left = walk.left.checked_sub(1)?;
            if m.name == field {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in t.members.iter().filter(|m| m.name.is_empty()) {
            walk.left = walk.left.checked_sub(1)?;
            if let Some((bits, ty)) = self.member_bits(m.type_id, field, depth + 1, walk) {
                return Some((m.bit_offset.checked_add(bits)?, ty));
            }
        }
        None
    }

    /// The value of the enumerator `name` (any enum).
    pub fn enum_value(&self, name: &str) -> Result<i64, String> {
        self.types
            .iter()
            .enumerate()
            .filter(|(_, t)| t.kind == KIND_ENUM || t.kind == KIND_ENUM64)
            .find_map(|(id, t)| t.enumerators.iter().find(|(n, _)| *n == name).map(|(_, v)| (id, *v)))
            .map(|(id, v)| {
                self.read.borrow_mut().insert(id as u32);
                v
            })
            .ok_or_else(|| self.missing(format!("enumerator {name} not in BTF")))
    }

    /// Function `name`'s prototype as C writes it, parameter names left out:
    /// `struct folio *folio_walk_start(struct folio_walk *, …)`. Typedef names
    /// are kept (not resolved), a named struct is `struct NAME` whether
    /// complete or declared.
    pub fn function_signature(&self, name: &str) -> Result<String, String> {
        let func = self.find(KIND_FUNC, name).ok_or_else(|| self.missing(format!("function {name} not in BTF")))?;
        let proto = self
            .get(self.get(func).map_or(0, |f| f.size_or_type))
            .filter(|t| t.kind == KIND_FUNC_PROTO)
            .ok_or_else(|| format!("function {name} has no prototype"))?;
        let params: Vec<String> = proto.members.iter().map(|p| self.type_name(p.type_id, 0)).collect();
        let ret = self.type_name(proto.size_or_type, 0);
        let sep = if ret.ends_with('*') { "" } else { " " };
        Ok(format!("{ret}{sep}{name}({})", params.join(", ")))
    }

    /// A type as C writes it (`?` past 8 levels or for what it has no words for).
    fn type_name(&self, id: u32, depth: u32) -> String {
        if id == 0 {
            return "void".into();
        }
        let Some(t) = self.get(id).filter(|_| depth < 8) else { return "?".into() };
        let inner = || self.type_name(t.size_or_type, depth + 1);
        match t.kind {
            KIND_INT | KIND_FLOAT | KIND_TYPEDEF => t.name.to_string(),
            KIND_PTR => {
                let to = inner();
                if to.ends_with('*') { format!("{to}*") } else { format!("{to} *") }
            }
            KIND_STRUCT => format!("struct {}", t.name),
            KIND_UNION => format!("union {}", t.name),
            KIND_FWD => format!("struct {}", t.name),
            KIND_ENUM | KIND_ENUM64 => format!("enum {}", t.name),
            KIND_CONST => format!("const {}", inner()),
            KIND_VOLATILE => format!("volatile {}", inner()),
            KIND_RESTRICT | KIND_TYPE_TAG => inner(),
            _ => "?".into(),
        }
    }

    /// The parameters a tp_btf program sees for tracepoint `tp`: the prototype of
    /// `btf_trace_<tp>` without its leading `void *__data`. Each entry is the
    /// resolved type of one argument.
    pub fn tracepoint_args(&self, tp: &str) -> Result<Vec<&Type<'a>>, String> {
        let typedef = self
            .find(KIND_TYPEDEF, &format!("btf_trace_{tp}"))
            .ok_or_else(|| self.missing(format!("tracepoint {tp} not in BTF")))?;
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
        /// A layout section (`info_sz`, `elem_sz` by kind): a 32-byte header.
        layout: Option<Vec<(u8, u8)>>,
    }

    impl Builder {
        pub fn new() -> Builder {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
                layout: None,
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
            self.raw(n, vlen | (kind << 24) | (u32::from(flag) << 31), size_or_type, &[])
        }

        /// Any type: its `btf_type` words and the bytes after them.
        pub fn raw(&mut self, name_off: u32, info: u32, size_or_type: u32, extra: &[u8]) -> u32 {
            self.types.extend(name_off.to_le_bytes());
            self.types.extend(info.to_le_bytes());
            self.types.extend(size_or_type.to_le_bytes());
            self.types.extend_from_slice(extra);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        /// The layout section the kernel writes from 7.1 on: one entry per kind
        /// this BTF's encoder knew, the known kinds' sizes and then `extra`.
        pub fn with_layout(&mut self, extra: &[(u8, u8)]) {
            let mut entries: Vec<(u8, u8)> = (0..=KIND_ENUM64)
                .map(|k| known_layout(k).map_or((0, 0), |(f, e)| (f as u8, e as u8)))
                .collect();
            entries.extend_from_slice(extra);
            self.layout = Some(entries);
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

        /// Header, types, layout section (if any), strings — the order of the
        /// kernel's own test (`btf_sanitize_layout`).
        pub fn build(&self) -> Vec<u8> {
            let layout: Vec<u8> = self
                .layout
                .iter()
                .flatten()
                .flat_map(|(info, elem)| [*info, *elem, 0, 0])
                .collect();
            let types_len = self.types.len() as u32;
            let mut out = Vec::new();
            out.extend(0xeb9fu16.to_le_bytes());
            out.push(1);
            out.push(0);
            out.extend((if self.layout.is_some() { 32u32 } else { 24 }).to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend(types_len.to_le_bytes());
            out.extend((types_len + layout.len() as u32).to_le_bytes());
            out.extend((self.strings.len() as u32).to_le_bytes());
            if self.layout.is_some() {
                out.extend(types_len.to_le_bytes());
                out.extend((layout.len() as u32).to_le_bytes());
            }
            out.extend(&self.types);
            out.extend(&layout);
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
        let data = b.build();
        let btf = Btf::parse(&data).unwrap();
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
        assert!(btf.partial.is_none());
        assert!(matches!(btf.for_aya(), Cow::Borrowed(b) if b == &data[..]));
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
        let data = b.build();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.enum_value("FOLL_ANON"), Ok(128));
        assert!(btf.has_function("lock_vma_under_rcu"));
        assert!(!btf.has_function("folio_walk_start"));
        let args = btf.tracepoint_args("mmap_lock_start_locking").unwrap();
        let names: Vec<_> = args.iter().map(|t| (t.kind, t.name)).collect();
        assert_eq!(names, vec![(KIND_PTR, ""), (KIND_PTR, ""), (KIND_INT, "_Bool")]);
        assert_eq!(btf.function_signature("lock_vma_under_rcu"), Ok("void lock_vma_under_rcu(void *, void *, char *, bool)".into()));
        assert!(btf.function_signature("folio_walk_start").is_err());
    }

    fn parse_err(data: &[u8]) -> String {
        Btf::parse(data).err().expect("rejected").to_string()
    }

    /// A header over `rest` with the given section words.
    fn header(hdr_len: u32, words: [u32; 4], rest: &[u8]) -> Vec<u8> {
        let mut out = vec![0x9f, 0xeb, 1, 0];
        out.extend(hdr_len.to_le_bytes());
        for w in words {
            out.extend(w.to_le_bytes());
        }
        out.extend_from_slice(rest);
        out
    }

    #[test]
    fn rejects_garbage_and_truncated_headers() {
        assert_eq!(Btf::parse(b"hello world, not btf at all").err(), Some(BtfError::Magic(0x6568)));
        assert_eq!(parse_err(b""), "truncated BTF (0 bytes, shorter than a 24-byte header)");
        assert_eq!(parse_err(&[0x9f, 0xeb]), "truncated BTF (2 bytes, shorter than a 24-byte header)");
        assert_eq!(
            parse_err(&header(24, [0, 0, 0, 1], &[])[..20]),
            "truncated BTF (20 bytes, shorter than a 24-byte header)"
        );
        assert_eq!(parse_err(&header(8, [0, 0, 0, 1], &[0])), "bad BTF header (hdr_len 8, at least 24)");
        assert_eq!(
            parse_err(&header(4096, [0, 0, 0, 1], &[0])),
            "truncated BTF (a 4096-byte header in a 25-byte file)"
        );
        // Offsets and lengths whose sums overflow 32 bits.
        assert_eq!(
            parse_err(&header(24, [u32::MAX, u32::MAX, 0, 1], &[0])),
            "truncated BTF (the type section ends at byte 8589934614, past the end of the file at 25)"
        );
        assert_eq!(
            parse_err(&header(24, [0, 0, 1, u32::MAX], &[0])),
            "truncated BTF (the string section ends at byte 4294967320, past the end of the file at 25)"
        );
        let mut with_layout = header(32, [0, 0, 0, 1], &[]);
        with_layout.extend([0, 0, 0, 0, 6, 0, 0, 0, 0]);
        assert_eq!(
            parse_err(&with_layout),
            "bad BTF header (a 6-byte layout section, not a whole number of 4-byte entries)"
        );
        assert_eq!(
            parse_err(&vec![0u8; MAX_FILE as usize + 1]),
            "larger than 64 MiB, which no kernel's BTF is"
        );
    }

    #[test]
    fn names_end_within_the_string_section_and_are_short() {
        let mut b = Builder::new();
        b.structure(KIND_STRUCT, "mm_struct", 8, &[("mmap_lock", 0, 0)]);
        let good = b.build();
        // The string section's last NUL gone: names would run past its end
        // (the old reader copied each to the end of the section).
        let mut no_nul = good.clone();
        *no_nul.last_mut().unwrap() = b'x';
        assert_eq!(
            parse_err(&no_nul),
            "bad BTF string section (its last byte is not NUL: names would run past its end)"
        );
        let mut first = good.clone();
        first[24 + 24] = b'x';
        assert_eq!(parse_err(&first), "bad BTF string section (its first byte is not NUL)");
        let empty = header(24, [0, 0, 0, 0], &[]);
        assert_eq!(parse_err(&empty), "bad BTF string section (empty)");
        // A member name offset past the section.
        let mut b = Builder::new();
        b.raw(0, (KIND_STRUCT << 24) | 1, 8, &[0xf0, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse_err(&b.build()),
            "bad BTF type 1: member 0: name offset 4294967280 is past the string section (1 bytes)"
        );
        // Longer than MAX_NAME, and not UTF-8.
        let mut b = Builder::new();
        b.int(&"x".repeat(MAX_NAME), 4);
        assert!(Btf::parse(&b.build()).is_ok());
        b.int(&"y".repeat(MAX_NAME + 1), 4);
        assert_eq!(
            parse_err(&b.build()),
            "bad BTF type 2: the name at string offset 1026 is longer than 1024 bytes"
        );
        // A tag's text is not a name: the kernel does not limit it.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let tag = b.s(&"z".repeat(2 * MAX_NAME));
        b.raw(tag, KIND_DECL_TAG << 24, int, &(-1i32).to_le_bytes());
        assert_eq!(Btf::parse(&b.build()).unwrap().get(2).map(|t| (t.kind, t.name)), Some((KIND_DECL_TAG, "")));
        let mut b = Builder::new();
        b.strings.extend([0xff, 0xfe, 0]);
        b.raw(1, KIND_INT << 24, 4, &32u32.to_le_bytes());
        assert_eq!(parse_err(&b.build()), "bad BTF type 1: the name at string offset 1 is not UTF-8");
    }

    #[test]
    fn counts_are_checked_before_anything_is_allocated() {
        // vlen 0xffffff with no members behind it: 200 MB the old reader would
        // have walked off the end of.
        let mut b = Builder::new();
        b.raw(0, (KIND_STRUCT << 24) | 0xff_ffff, 8, &[]);
        assert_eq!(
            parse_err(&b.build()),
            "bad BTF type 1: kind 4 with vlen 16777215 needs 201326580 bytes after its header, the type section has 0 left"
        );
        let mut b = Builder::new();
        b.int("int", 4);
        b.types.extend([0; 8]);
        assert_eq!(
            parse_err(&b.build()),
            "bad BTF type 2: truncated: 8 bytes left in the type section, a type takes 12 or more"
        );
        // One type more than the kernel allows.
        let mut b = Builder::new();
        for _ in 0..=MAX_TYPES {
            b.raw(0, KIND_PTR << 24, 0, &[]);
        }
        assert_eq!(
            Btf::parse(&b.build()).err(),
            Some(BtfError::TooManyTypes)
        );
        assert_eq!(
            BtfError::TooManyTypes.to_string(),
            "more than 1048575 BTF types (the kernel's limit, BTF_MAX_TYPE)"
        );
    }

    /// The 547-byte file of issue #18: `struct mm_struct` whose anonymous
    /// members are `mm_struct` itself and a chain of anonymous unions that
    /// contain each other and it. The old walk took 40^8 steps.
    pub fn self_referencing() -> Vec<u8> {
        let mut b = Builder::new();
        let (mm, a, c) = (1, 2, 3);
        let members = |n: usize, to: &[u32]| -> Vec<(&'static str, u32, u32)> {
            (0..n).map(|i| ("", to[i % to.len()], 0)).collect()
        };
        assert_eq!(b.structure(KIND_STRUCT, "mm_struct", 64, &members(20, &[mm, a])), mm);
        assert_eq!(b.structure(KIND_UNION, "", 64, &members(10, &[c, mm])), a);
        assert_eq!(b.structure(KIND_UNION, "", 64, &members(9, &[a, c, mm])), c);
        b.strings.extend_from_slice(b"padding\0");
        b.build()
    }

    /// The BTF target's seeds (`fuzz/corpus/btf/seed-*`): small files of the
    /// shapes the daemon reads, with and without a layout section, and the
    /// self-referencing one. Each parses and yields the offsets it was built
    /// with; written when REMOTE_VM_FUZZ_SEEDS names a folder.
    #[test]
    fn fuzz_seeds_are_btf_the_reader_takes() {
        let kernel_like = |layout: bool| {
            let mut b = Builder::new();
            if layout {
                b.with_layout(&[(4, 8)]);
            }
            let int = b.int("int", 4);
            let long = b.int("long", 8);
            let rwsem = b.structure(KIND_STRUCT, "rw_semaphore", 40, &[("count", long, 0), ("owner", long, 64)]);
            let anon = b.structure(KIND_UNION, "", 200, &[("mm_users", int, 0), ("mmap_lock", rwsem, 1024)]);
            let mm = b.structure(KIND_STRUCT, "mm_struct", 300, &[("", anon, 64), ("mm_lock_seq", long, 2048)]);
            let mm_ptr = b.ptr(mm);
            b.structure(KIND_STRUCT, "task_struct", 4096, &[("pid", int, 0), ("tgid", int, 32), ("mm", mm_ptr, 64)]);
            b.enumeration("", &[("FOLL_WRITE", 1), ("FOLL_FORCE", 16), ("FOLL_ANON", 128)]);
            let boolean = b.int("_Bool", 1);
            let bool_t = b.typedef("bool", boolean);
            let void_ptr = b.ptr(0);
            let proto = b.proto(int, &[void_ptr, mm_ptr, long, bool_t]);
            let fptr = b.ptr(proto);
            b.typedef("btf_trace_mmap_lock_start_locking", fptr);
            b.typedef("btf_trace_mmap_lock_acquire_returned", fptr);
            b.func("lock_vma_under_rcu", proto);
            b.func("__access_remote_vm", proto);
            b.build()
        };
        let seeds = [
            ("seed-kernel-like", kernel_like(false)),
            ("seed-kernel-like-layout", kernel_like(true)),
            ("seed-self-referencing", self_referencing()),
        ];
        for (name, data) in &seeds[..2] {
            let btf = Btf::parse(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(btf.field_offset("mm_struct", "mmap_lock"), Ok(136), "{name}");
            assert_eq!(btf.field_offset("task_struct", "mm"), Ok(8), "{name}");
            assert_eq!(btf.enum_value("FOLL_ANON"), Ok(128), "{name}");
            assert!(btf.has_function("lock_vma_under_rcu"), "{name}");
            assert_eq!(btf.tracepoint_args("mmap_lock_start_locking").map(|a| a.len()), Ok(3), "{name}");
        }
        if let Some(dir) = std::env::var_os("REMOTE_VM_FUZZ_SEEDS") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, data) in seeds {
                std::fs::write(dir.join(name), data).unwrap();
            }
        }
    }

    #[test]
    fn member_walks_end_on_cycles() {
        let data = self_referencing();
        assert_eq!(data.len(), 547);
        let btf = Btf::parse(&data).unwrap();
        let start = std::time::Instant::now();
        assert_eq!(
            btf.field_offset("mm_struct", "mmap_lock"),
            Err("struct mm_struct has no field mmap_lock in BTF".to_string())
        );
        assert!(start.elapsed() < std::time::Duration::from_millis(500), "{:?}", start.elapsed());

        // A typedef loop as an anonymous member's type.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        // ids: 2 = typedef → 3, 3 = typedef → 2.
        b.typedef("a", 3);
        b.typedef("b", 2);
        b.structure(KIND_STRUCT, "task_struct", 16, &[("", 2, 0), ("mm", int, 64)]);
        let data = b.build();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.field_offset("task_struct", "mm"), Ok(8));
        assert_eq!(
            btf.field_offset("task_struct", "tgid"),
            Err("struct task_struct has no field tgid in BTF".to_string())
        );
    }

    #[test]
    fn a_field_search_gives_up_after_max_walk_members() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let members: Vec<(&str, u32, u32)> = (0..MAX_WALK / 2 + 1).map(|_| ("", int, 0)).collect();
        b.structure(KIND_STRUCT, "mm_struct", 4, &members);
        let data = b.build();
        assert_eq!(
            Btf::parse(&data).unwrap().field_offset("mm_struct", "mmap_lock"),
            Err("struct mm_struct: field mmap_lock not found in the first 100000 members searched".to_string())
        );
    }

    #[test]
    fn anonymous_members_are_searched_max_nesting_levels_deep() {
        // A chain of anonymous structs, the field at the bottom; the same
        // struct also reached first at a deeper level must still be searched
        // at its shallower one.
        let chain = |levels: u32| {
            let mut b = Builder::new();
            let int = b.int("int", 4);
            let mut inner = b.structure(KIND_STRUCT, "", 4, &[("mmap_lock", int, 32)]);
            for _ in 1..levels {
                inner = b.structure(KIND_STRUCT, "", 4, &[("", inner, 8)]);
            }
            b.structure(KIND_STRUCT, "mm_struct", 4, &[("", inner, 8)]);
            b.build()
        };
        // 32 bits into the innermost, 8 into each of the others.
        let data = chain(MAX_NESTING);
        assert_eq!(
            Btf::parse(&data).unwrap().field_offset("mm_struct", "mmap_lock"),
            Ok(u64::from(4 + MAX_NESTING))
        );
        let data = chain(MAX_NESTING + 1);
        assert!(Btf::parse(&data).unwrap().field_offset("mm_struct", "mmap_lock").is_err());

        let mut b = Builder::new();
        let int = b.int("int", 4);
        let target = b.structure(KIND_STRUCT, "", 4, &[("mmap_lock", int, 0)]);
        let x = b.structure(KIND_STRUCT, "", 4, &[("", target, 0)]);
        let mut deep = x;
        for _ in 1..MAX_NESTING {
            deep = b.structure(KIND_STRUCT, "", 4, &[("", deep, 0)]);
        }
        // Through the first member `x` is searched at the last level and
        // `target` is cut off; through the second it is searched again.
        b.structure(KIND_STRUCT, "mm_struct", 4, &[("", deep, 0), ("", x, 64)]);
        let data = b.build();
        assert_eq!(Btf::parse(&data).unwrap().field_offset("mm_struct", "mmap_lock"), Ok(8));
    }

    /// Kind 25, unknown to this reader (and to aya), then `struct mm_struct`.
    fn with_unknown_kind(layout: bool) -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        if layout {
            // Kinds 20 to 25: 25 has 4 bytes and 8 per element.
            b.with_layout(&[(0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (4, 8)]);
        }
        b.raw(0, (25 << 24) | 2, 0, &[0; 4 + 2 * 8]);
        b.structure(KIND_STRUCT, "mm_struct", 64, &[("mmap_lock", int, 8 * 8)]);
        b.enumeration("", &[("FOLL_WRITE", 1)]);
        b.build()
    }

    #[test]
    fn an_unknown_kind_is_skipped_with_the_layout_section() {
        let data = with_unknown_kind(true);
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.partial, None);
        assert_eq!(btf.get(2).map(|t| t.kind), Some(25));
        assert_eq!(btf.field_offset("mm_struct", "mmap_lock"), Ok(8));
        assert_eq!(btf.enum_value("FOLL_WRITE"), Ok(1));
        assert_eq!(
            btf.field_offset("task_struct", "mm"),
            Err("struct task_struct not in BTF; 1 type skipped, of kinds this reader does not know: 25".to_string())
        );
        // aya cannot parse the file itself; the copy for it has a `const void`
        // in place of the unknown type, and the ids of the types after it.
        assert!(aya::Btf::parse(&data, aya::Endianness::default()).is_err());
        let for_aya = btf.for_aya();
        let theirs = aya::Btf::parse(&for_aya, aya::Endianness::default()).unwrap();
        assert_eq!(theirs.id_by_type_name_kind("mm_struct", aya_obj::btf::BtfKind::Struct).unwrap(), 3);
        let again = Btf::parse(&for_aya).unwrap();
        assert_eq!(again.get(2).map(|t| (t.kind, t.size_or_type)), Some((KIND_CONST, 0)));
        assert_eq!(again.field_offset("mm_struct", "mmap_lock"), Ok(8));
    }

    #[test]
    fn an_unknown_kind_without_a_layout_section_keeps_the_types_before_it() {
        let data = with_unknown_kind(false);
        let btf = Btf::parse(&data).unwrap();
        let why = "unknown BTF kind 25 at type 2 and no layout section to skip it: types from 2 on not read";
        assert_eq!(btf.partial.as_deref(), Some(why));
        assert_eq!(btf.get(1).map(|t| t.name), Some("int"));
        assert!(btf.get(2).is_none());
        assert_eq!(btf.field_offset("mm_struct", "mmap_lock"), Err(format!("struct mm_struct not in BTF; {why}")));
        assert_eq!(btf.enum_value("FOLL_WRITE"), Err(format!("enumerator FOLL_WRITE not in BTF; {why}")));
        // aya gets the types before it.
        let for_aya = btf.for_aya();
        let theirs = aya::Btf::parse(&for_aya, aya::Endianness::default()).unwrap();
        assert_eq!(theirs.id_by_type_name_kind("int", aya_obj::btf::BtfKind::Int).unwrap(), 1);
        assert!(theirs.id_by_type_name_kind("mm_struct", aya_obj::btf::BtfKind::Struct).is_err());
    }

    #[test]
    fn a_layout_section_that_stops_short_or_disagrees() {
        // The layout knows kinds up to 19: kind 25 is past it.
        let mut b = Builder::new();
        b.int("int", 4);
        b.with_layout(&[]);
        b.raw(0, 25 << 24, 0, &[]);
        let data = b.build();
        assert_eq!(
            Btf::parse(&data).unwrap().partial.as_deref(),
            Some("unknown BTF kind 25 at type 2 and the layout section describes kinds 0 to 19 only: types from 2 on not read")
        );
        // The layout gives ENUM 12-byte elements: no longer the ENUM this
        // reader knows, so it is skipped rather than misread.
        let mut b = Builder::new();
        let mut layout: Vec<(u8, u8)> = (0..=KIND_ENUM64)
            .map(|k| known_layout(k).map_or((0, 0), |(f, e)| (f as u8, e as u8)))
            .collect();
        layout[KIND_ENUM as usize] = (0, 12);
        b.layout = Some(layout);
        b.raw(0, (KIND_ENUM << 24) | 1, 4, &[0; 12]);
        let int = b.int("int", 4);
        b.structure(KIND_STRUCT, "mm_struct", 8, &[("mmap_lock", int, 0)]);
        let data = b.build();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.get(1).map(|t| t.enumerators.len()), Some(0));
        assert_eq!(btf.field_offset("mm_struct", "mmap_lock"), Ok(0));
        assert_eq!(
            btf.enum_value("FOLL_WRITE"),
            Err("enumerator FOLL_WRITE not in BTF; 1 type skipped, of kinds this reader does not know: 6".to_string())
        );
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(format!("rvm-btf-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let read = |p: &Path| read_file(p).map(|b| b.len()).map_err(|e| e.to_string());
        assert_eq!(read(&dir), Err("not a regular file (a directory)".into()));
        assert_eq!(read(Path::new("/dev/zero")), Err("not a regular file (a character device)".into()));
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read(&fifo), Err("not a regular file (a FIFO)".into()));
        let big = dir.join("big");
        std::fs::File::create(&big).unwrap().set_len(MAX_FILE + 1).unwrap();
        assert_eq!(read(&big), Err("larger than 64 MiB, which no kernel's BTF is".into()));
        std::fs::File::create(&big).unwrap().set_len(MAX_FILE).unwrap();
        assert_eq!(read(&big), Ok(MAX_FILE as usize));
        assert_eq!(read(&dir.join("none")), Err("No such file or directory (os error 2)".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A kernel's BTF cut down to what the daemon reads
    /// (`cargo xtask btf-testdata`): shared-6.12, shared-7.3, debian-6.1.
    pub fn testdata(name: &str) -> Btf<'static> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/btf").join(format!("{name}.btf"));
        Btf::from_file(&path).unwrap()
    }

    #[test]
    fn reads_kernels_btf_and_foll_flags_that_are_defines() {
        for name in ["shared-6.12", "shared-7.3", "debian-6.1"] {
            let btf = testdata(name);
            assert!(btf.partial.is_none(), "{name}");
            assert!(matches!(btf.for_aya(), Cow::Borrowed(_)), "{name}");
            assert!(btf.field_offset("mm_struct", "mmap_lock").is_ok(), "{name}");
            assert!(btf.field_offset("task_struct", "mm").is_ok(), "{name}");
            // FOLL_* became an enum in 6.2; 6.1 has #defines, not in BTF.
            let foll_write = if name == "debian-6.1" { Err("enumerator FOLL_WRITE not in BTF".to_string()) } else { Ok(1) };
            assert_eq!(btf.enum_value("FOLL_WRITE"), foll_write, "{name}");
        }
    }

    #[test]
    fn a_minimized_btf_minimizes_to_itself() {
        for name in ["shared-6.12", "shared-7.3", "debian-6.1"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/btf").join(format!("{name}.btf"));
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(crate::kernel::minimize_btf(&bytes).as_deref(), Ok(bytes.as_slice()), "{name}");
        }
    }
}
