//! Reading a raw BTF blob (kernel `Documentation/bpf/btf.rst`): the header, the type section
//! and the string section.
//!
//! The blob comes from the kernel or from an object file a user supplied, so it is treated as
//! hostile: every read is bounds-checked, the type count is capped, and every name offset and
//! type reference is checked once here so that later lookups can rely on them.

use crate::btf::{Btf, Enumerator, Kind, Member, SecVar, Type};
use crate::{Error, MAX_TYPES};

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

/// A little-endian reader over a byte slice that reports how far it got when it runs out.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let end = self.pos + 4;
        let Some(word) = self.bytes.get(self.pos..end) else {
            return Err(Error::Truncated(format!(
                "the type section ends inside {what} at byte {} of {}",
                self.pos,
                self.bytes.len()
            )));
        };
        self.pos = end;
        Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
    }
}

fn le_u32(raw: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]])
}

/// The byte range `[off, off + len)` of a section, relative to the end of the header.
fn section(raw: &[u8], hdr_len: usize, off: u32, len: u32, name: &str) -> Result<std::ops::Range<usize>, Error> {
    let start = hdr_len as u64 + u64::from(off);
    let end = start + u64::from(len);
    if end > raw.len() as u64 {
        return Err(Error::Truncated(format!(
            "the {name} section runs to byte {end} but the blob has {} bytes",
            raw.len()
        )));
    }
    Ok(start as usize..end as usize)
}

impl Btf {
    /// Parses a raw BTF blob: what the kernel returns for a map's `btf_id`
    /// (`BPF_BTF_GET_FD_BY_ID`, then `BPF_OBJ_GET_INFO_BY_FD` with a `btf` buffer), the
    /// contents of an ELF `.BTF` section, or `/sys/kernel/btf/vmlinux`.
    ///
    /// Only standalone BTF (type ids from 1) is read: split BTF such as a kernel module's
    /// refers to types of its base and is refused. Only little-endian BTF is read; a
    /// big-endian blob or a bad header is an error that says which. The blob is untrusted:
    /// parsing never panics and allocates in proportion to its size, with at most
    /// [`crate::MAX_TYPES`] types.
    pub fn parse(raw: &[u8]) -> Result<Btf, Error> {
        let magic = raw.get(..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        match magic {
            Some(MAGIC) => {}
            Some(m) if m == MAGIC.swap_bytes() => return Err(Error::BigEndian),
            Some(found) => return Err(Error::BadMagic { found }),
            None => return Err(Error::Truncated(format!("{} bytes is shorter than the BTF header", raw.len()))),
        }
        if raw.len() < HEADER_LEN {
            return Err(Error::Truncated(format!("{} bytes is shorter than the 24-byte BTF header", raw.len())));
        }
        if raw[2] != 1 {
            return Err(Error::BadHeader(format!("version {} (only version 1 exists)", raw[2])));
        }
        let hdr_len = le_u32(raw, 4) as usize;
        if hdr_len < HEADER_LEN || hdr_len > raw.len() {
            return Err(Error::BadHeader(format!("header length {hdr_len} (blob is {} bytes)", raw.len())));
        }
        let (type_off, type_len, str_off, str_len) =
            (le_u32(raw, 8), le_u32(raw, 12), le_u32(raw, 16), le_u32(raw, 20));
        if !type_off.is_multiple_of(4) {
            return Err(Error::BadHeader(format!("type section offset {type_off} is not 4-byte aligned")));
        }
        let type_range = section(raw, hdr_len, type_off, type_len, "type")?;
        let str_range = section(raw, hdr_len, str_off, str_len, "string")?;
        let strings = &raw[str_range];
        if strings.first() != Some(&0) || strings.last() != Some(&0) {
            return Err(Error::BadHeader("the string section must start and end with a NUL byte".to_string()));
        }

        let mut reader = Reader { bytes: &raw[type_range], pos: 0 };
        let mut types = vec![Type { name_off: 0, kind: Kind::Void }];
        while reader.pos < reader.bytes.len() {
            if types.len() > MAX_TYPES {
                return Err(Error::TooManyTypes { limit: MAX_TYPES });
            }
            let id = types.len() as u32;
            types.push(read_type(&mut reader, id)?);
        }
        let btf = Btf { types, strings: strings.to_vec() };
        btf.check()?;
        Ok(btf)
    }

    /// Checks what parsing deferred: names are in the string section and UTF-8, and every
    /// type reference points at a type of this blob.
    fn check(&self) -> Result<(), Error> {
        let count = self.types.len() as u32;
        for (id, ty) in self.types.iter().enumerate() {
            let id = id as u32;
            self.check_name(id, ty.name_off)?;
            let refer = |target: u32| {
                if target < count {
                    Ok(())
                } else {
                    Err(Error::bad_type(
                        id,
                        format!(
                            "refers to type {target} but the blob's last type is {} (split BTF, such as a \
                             kernel module's, needs its base BTF and is not supported)",
                            count - 1
                        ),
                    ))
                }
            };
            match &ty.kind {
                Kind::Void | Kind::Int { .. } | Kind::Fwd { .. } | Kind::Float { .. } => {}
                Kind::Ptr { target }
                | Kind::Typedef { target }
                | Kind::Volatile { target }
                | Kind::Const { target }
                | Kind::Restrict { target }
                | Kind::TypeTag { target }
                | Kind::Var { target }
                | Kind::DeclTag { target }
                | Kind::Func { proto: target } => refer(*target)?,
                Kind::Array { elem, .. } => refer(*elem)?,
                Kind::Composite { members, .. } => {
                    for m in members {
                        self.check_name(id, m.name_off)?;
                        refer(m.type_id)?;
                    }
                }
                Kind::Enum { values, .. } => {
                    for v in values {
                        self.check_name(id, v.name_off)?;
                    }
                }
                Kind::FuncProto { ret, params } => {
                    refer(*ret)?;
                    params.iter().try_for_each(|&p| refer(p))?;
                }
                Kind::Datasec { vars, .. } => vars.iter().try_for_each(|v| refer(v.type_id))?,
            }
        }
        Ok(())
    }

    fn check_name(&self, id: u32, off: u32) -> Result<(), Error> {
        let Some(tail) = self.strings.get(off as usize..) else {
            return Err(Error::bad_type(id, format!("name offset {off} is past the string section")));
        };
        // The section ends with NUL, so there is always one; a name is at most
        // MAX_NAME bytes (the kernel's limit for BTF names), so a long run without NUL read
        // once per member cannot make parsing quadratic.
        let window = &tail[..tail.len().min(MAX_NAME + 1)];
        let Some(end) = window.iter().position(|&b| b == 0) else {
            return Err(Error::bad_type(id, format!("name at offset {off} is longer than {MAX_NAME} bytes")));
        };
        std::str::from_utf8(&tail[..end])
            .map_err(|_| Error::bad_type(id, format!("name at offset {off} is not UTF-8")))?;
        Ok(())
    }
}

/// Reads one `struct btf_type` and the payload its kind puts after it.
/// Longest name a type or member may have (KSYM_NAME_LEN, as the kernel checks BTF).
const MAX_NAME: usize = 512;

fn read_type(r: &mut Reader, id: u32) -> Result<Type, Error> {
    let what = format!("type {id}");
    let name_off = r.u32(&what)?;
    let info = r.u32(&what)?;
    let size_or_type = r.u32(&what)?;
    let vlen = (info & 0xffff) as usize;
    let kind = ((info >> 24) & 0x1f) as u8;
    let flag = info >> 31 == 1;
    let size = size_or_type;
    let target = size_or_type;
    let bad = |reason: String| Err(Error::bad_type(id, reason));

    let kind = match kind {
        1 => {
            let word = r.u32(&what)?;
            let (encoding, offset, bits) = ((word >> 24) as u8 & 0x0f, (word >> 16) as u8, word as u8);
            if !matches!(size, 1 | 2 | 4 | 8 | 16) {
                return bad(format!("integer of {size} bytes (must be 1, 2, 4, 8 or 16)"));
            }
            if bits == 0 || u32::from(offset) + u32::from(bits) > size * 8 || bits > 128 {
                return bad(format!("integer bits {offset}+{bits} do not fit its {size} bytes"));
            }
            Kind::Int { size, encoding, offset, bits }
        }
        2 => Kind::Ptr { target },
        3 => {
            let elem = r.u32(&what)?;
            let _index_type = r.u32(&what)?;
            let len = r.u32(&what)?;
            Kind::Array { elem, len }
        }
        4 | 5 => {
            let mut members = Vec::with_capacity(vlen.min(r.bytes.len() / 12));
            for _ in 0..vlen {
                members.push(Member { name_off: r.u32(&what)?, type_id: r.u32(&what)?, offset: r.u32(&what)? });
            }
            Kind::Composite { union: kind == 5, size, bitfield_form: flag, members }
        }
        6 | 19 => {
            let wide = kind == 19;
            if !matches!(size, 1 | 2 | 4 | 8) {
                return bad(format!("enum of {size} bytes (must be 1, 2, 4 or 8)"));
            }
            let mut values = Vec::with_capacity(vlen.min(r.bytes.len() / 8));
            for _ in 0..vlen {
                let name_off = r.u32(&what)?;
                let low = u64::from(r.u32(&what)?);
                let value = if wide { low | u64::from(r.u32(&what)?) << 32 } else { low };
                values.push(Enumerator { name_off, value });
            }
            Kind::Enum { size, signed: flag, wide, values }
        }
        7 => Kind::Fwd { union: flag },
        8 => Kind::Typedef { target },
        9 => Kind::Volatile { target },
        10 => Kind::Const { target },
        11 => Kind::Restrict { target },
        12 => Kind::Func { proto: target },
        13 => {
            let mut params = Vec::with_capacity(vlen.min(r.bytes.len() / 8));
            for _ in 0..vlen {
                let _name_off = r.u32(&what)?;
                params.push(r.u32(&what)?);
            }
            Kind::FuncProto { ret: target, params }
        }
        14 => {
            let _linkage = r.u32(&what)?;
            Kind::Var { target }
        }
        15 => {
            let mut vars = Vec::with_capacity(vlen.min(r.bytes.len() / 12));
            for _ in 0..vlen {
                let (type_id, offset, _size) = (r.u32(&what)?, r.u32(&what)?, r.u32(&what)?);
                vars.push(SecVar { type_id, offset });
            }
            Kind::Datasec { size, vars }
        }
        16 => {
            if !matches!(size, 2 | 4 | 8 | 12 | 16) {
                return bad(format!("float of {size} bytes (must be 2, 4, 8, 12 or 16)"));
            }
            Kind::Float { size }
        }
        17 => {
            let _component_idx = r.u32(&what)?;
            Kind::DeclTag { target }
        }
        18 => Kind::TypeTag { target },
        kind => return Err(Error::UnknownKind { id, kind }),
    };
    Ok(Type { name_off, kind })
}
