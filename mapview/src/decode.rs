//! Turning the bytes of a map key or value into JSON, guided by its BTF type.
//!
//! Map data is little-endian like the BTF that describes it (big-endian BTF is refused at
//! parse time). Integers that fit 64 bits are JSON numbers so that `jq` and the exporter can
//! compute with them; everything that a JSON number cannot hold exactly is a hex string.

use serde_json::{Map, Value};

use crate::btf::{Btf, INT_BOOL, INT_CHAR, INT_SIGNED, Kind, PTR_SIZE, Type};
use crate::{Error, MAX_DEPTH};

/// An integer read out of a value: its raw bits and how they are to be read.
pub(crate) struct RawInt<'a> {
    /// The bits, zero-extended; only the low `width` are meaningful.
    pub bits: u128,
    pub width: u32,
    pub signed: bool,
    pub shape: IntShape<'a>,
}

pub(crate) enum IntShape<'a> {
    Plain,
    Bool,
    Enum { ty: &'a Type, wide: bool },
}

impl RawInt<'_> {
    /// The value as a signed number when the type is signed and the sign bit is set.
    pub fn negative(&self) -> Option<i128> {
        let sign = 1u128.checked_shl(self.width.checked_sub(1)?)?;
        (self.signed && self.bits & sign != 0).then(|| (self.bits | !mask(self.width)) as i128)
    }

    fn to_json(&self, btf: &Btf) -> Value {
        match self.shape {
            IntShape::Bool => return Value::Bool(self.bits != 0),
            IntShape::Enum { ty, wide } => {
                if let Some(name) = enumerator(btf, ty, wide, self.bits as u64, self.width) {
                    return Value::String(name.to_string());
                }
            }
            IntShape::Plain => {}
        }
        // Wider integers are always hex, so a field keeps one JSON type whatever its value.
        if self.width > 64 {
            return Value::String(format!("{:#x}", self.bits));
        }
        match self.negative() {
            Some(n) => Value::from(n as i64),
            None => Value::from(self.bits as u64),
        }
    }
}

/// Ones in the low `width` bits.
fn mask(width: u32) -> u128 {
    if width >= 128 { u128::MAX } else { (1u128 << width) - 1 }
}

/// The enumerator whose value has the same low bits as `raw`.
///
/// Compared over the bits both sides have, because compilers before BTF_KIND_ENUM64 stored
/// negative values of a 1-byte enum as 32-bit words and did not mark enums signed.
fn enumerator<'b>(btf: &'b Btf, ty: &Type, wide: bool, raw: u64, width: u32) -> Option<&'b str> {
    let Kind::Enum { values, .. } = &ty.kind else { return None };
    let width = width.min(if wide { 64 } else { 32 });
    let m = mask(width) as u64;
    values.iter().find(|v| v.value & m == raw & m).map(|v| btf.str_at(v.name_off))
}

/// Reads `width` bits starting `start` bits into `bytes` (little-endian bit order).
fn read_bits(bytes: &[u8], start: u64, width: u32) -> Option<u128> {
    let first = usize::try_from(start / 8).ok()?;
    let end = usize::try_from((start + u64::from(width)).div_ceil(8)).ok()?;
    let skip = (start % 8) as u32;
    let mut bits = 0u128;
    for (i, &b) in bytes.get(first..end)?.iter().enumerate() {
        let at = i as u32 * 8;
        bits |= match at.checked_sub(skip) {
            Some(shift) if shift < 128 => u128::from(b) << shift,
            Some(_) => 0,
            None => u128::from(b) >> (skip - at),
        };
    }
    Some(bits & mask(width))
}

impl Btf {
    /// Decodes `bytes` as a value of type `id` into JSON, for `kubectl bpfleet maps` and
    /// for labels of the exporter.
    ///
    /// - integers up to 64 bits are JSON numbers (exact), wider ones a `"0x…"` string of
    ///   their bits, BTF_INT_BOOL integers `true`/`false`;
    /// - `char` arrays are a string up to the first NUL when that is printable UTF-8, else
    ///   an array of numbers;
    /// - structs are objects of their fields (anonymous struct/union members flattened
    ///   into them, bitfields read as integers); unions are objects of every member;
    /// - enums are the enumerator's name, or the number when none matches;
    /// - arrays are arrays, pointers a `"0x…"` string, 4- and 8-byte floats numbers
    ///   (non-finite ones `"NaN"`, `"inf"`, `"-inf"`), other floats their bytes in hex;
    /// - a data section (the value type of a `.data`/`.bss` map) is an object of its
    ///   variables; typedefs, qualifiers and type tags are seen through.
    ///
    /// Object keys come in declaration order only when serde_json's `preserve_order` is on;
    /// [`Btf::field_names`] always gives that order. `bytes` shorter than the type is an
    /// error; longer is fine and the rest is ignored, so one CPU's value of a per-CPU map can
    /// be passed as the buffer from its 8-byte-aligned slot on.
    pub fn decode(&self, id: u32, bytes: &[u8]) -> Result<Value, Error> {
        // Too short a value is refused by the root's own check in `value`.
        let size = self.layout_size(id)?;
        let mut decoder = Decoder::new(self, id, size);
        decoder.value(id, bytes, 0)
    }

    /// Decodes a (possibly bitfield) field `bit_offset` bits into `bytes`: [`crate::Field`]'s work.
    pub(crate) fn decode_at(&self, id: u32, bytes: &[u8], bit_offset: u64, bit_size: u32) -> Result<Value, Error> {
        if bit_size != 0 {
            return Ok(self.int_at(id, bytes, bit_offset, bit_size)?.to_json(self));
        }
        let rest = self.byte_slice(id, bytes, bit_offset)?;
        self.decode(id, rest)
    }

    /// The integer or enum of type `id` at `bit_offset` in `bytes`; `bit_size` 0 means the
    /// type's own size (not a bitfield).
    pub(crate) fn int_at(&self, id: u32, bytes: &[u8], bit_offset: u64, bit_size: u32) -> Result<RawInt<'_>, Error> {
        let (_, ty) = self.resolve(id)?;
        let (start, width, signed, shape) = match ty.kind {
            Kind::Int { size, encoding, offset, bits } => {
                let shape = if encoding & INT_BOOL != 0 { IntShape::Bool } else { IntShape::Plain };
                let signed = encoding & INT_SIGNED != 0;
                match bit_size {
                    0 => (bit_offset + u64::from(offset), u32::from(bits), signed, shape),
                    n if n <= size * 8 => (bit_offset, n, signed, shape),
                    n => return Err(Error::bad_type(id, format!("bitfield of {n} bits in a {size}-byte integer"))),
                }
            }
            Kind::Enum { size, signed, wide, .. } => {
                let width = match bit_size {
                    0 => size * 8,
                    n if n <= size * 8 => n,
                    n => return Err(Error::bad_type(id, format!("bitfield of {n} bits in a {size}-byte enum"))),
                };
                (bit_offset, width, signed, IntShape::Enum { ty, wide })
            }
            _ => return Err(Error::NotAnInteger { type_name: self.type_name(id) }),
        };
        let bits = read_bits(bytes, start, width).ok_or_else(|| Error::ShortValue {
            type_name: self.type_name(id),
            need: (start + u64::from(width)).div_ceil(8),
            have: bytes.len() as u64,
        })?;
        Ok(RawInt { bits, width, signed, shape })
    }

    /// The bytes from `bit_offset` on, for a field that starts on a byte.
    pub(crate) fn byte_slice<'b>(&self, id: u32, bytes: &'b [u8], bit_offset: u64) -> Result<&'b [u8], Error> {
        if !bit_offset.is_multiple_of(8) {
            let reason =
                format!("`{}` starts at bit {bit_offset}, inside a byte, but is no bitfield", self.type_name(id));
            return Err(Error::bad_type(id, reason));
        }
        usize::try_from(bit_offset / 8).ok().and_then(|at| bytes.get(at..)).ok_or_else(|| Error::ShortValue {
            type_name: self.type_name(id),
            need: bit_offset / 8,
            have: bytes.len() as u64,
        })
    }
}

/// One decode: the BTF and how many more JSON values hostile BTF may make it produce.
struct Decoder<'b> {
    btf: &'b Btf,
    root: u32,
    budget: u64,
}

impl<'b> Decoder<'b> {
    /// The budget grows with the value's size: a large array is legitimate, while a
    /// zero-sized type repeated four billion times is not.
    fn new(btf: &'b Btf, root: u32, size: u32) -> Self {
        Decoder { btf, root, budget: (1 << 16) + 16 * u64::from(size) }
    }

    fn spend(&mut self) -> Result<(), Error> {
        match self.budget.checked_sub(1) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(Error::TooLarge { type_name: self.btf.type_name(self.root) }),
        }
    }

    fn value(&mut self, id: u32, bytes: &[u8], depth: u32) -> Result<Value, Error> {
        let btf = self.btf;
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep { type_name: btf.type_name(self.root), limit: MAX_DEPTH });
        }
        self.spend()?;
        let (rid, ty) = btf.resolve(id)?;
        let need = btf.layout_size(rid)?;
        if bytes.len() < need as usize {
            return Err(Error::ShortValue {
                type_name: btf.type_name(id),
                need: need.into(),
                have: bytes.len() as u64,
            });
        }
        match &ty.kind {
            Kind::Int { .. } | Kind::Enum { .. } => Ok(btf.int_at(rid, bytes, 0, 0)?.to_json(btf)),
            Kind::Ptr { .. } => {
                let word: [u8; PTR_SIZE as usize] =
                    bytes.get(..PTR_SIZE as usize).and_then(|w| w.try_into().ok()).unwrap_or_default();
                Ok(Value::String(format!("{:#x}", u64::from_le_bytes(word))))
            }
            Kind::Float { size } => Ok(float(bytes.get(..*size as usize).unwrap_or_default())),
            Kind::Array { elem, len } => self.array(*elem, *len, bytes, depth),
            Kind::Composite { .. } | Kind::Datasec { .. } => {
                let mut object = Map::new();
                for field in btf.fields(rid, &mut self.budget)? {
                    let value = if field.bit_size != 0 {
                        btf.int_at(field.type_id, bytes, field.bit_offset, field.bit_size)?.to_json(btf)
                    } else {
                        let rest = btf.byte_slice(field.type_id, bytes, field.bit_offset)?;
                        self.value(field.type_id, rest, depth + 1)?
                    };
                    object.insert(field.name.to_string(), value);
                }
                Ok(Value::Object(object))
            }
            _ => Err(Error::NoLayout { type_name: btf.type_name(rid) }),
        }
    }

    fn array(&mut self, elem: u32, len: u32, bytes: &[u8], depth: u32) -> Result<Value, Error> {
        let btf = self.btf;
        let elem_size = btf.layout_size(elem)? as usize;
        if is_char(btf, btf.resolve(elem)?.1) {
            let chars = bytes.get(..len as usize).unwrap_or_default();
            let text = &chars[..chars.iter().position(|&b| b == 0).unwrap_or(chars.len())];
            if let Ok(text) = std::str::from_utf8(text)
                && !text.chars().any(char::is_control)
            {
                self.spend()?;
                return Ok(Value::String(text.to_string()));
            }
        }
        let mut items = Vec::new();
        for i in 0..len as usize {
            // In bounds: `value` checked `bytes` against the array's size.
            let rest = bytes.get(i * elem_size..).unwrap_or_default();
            items.push(self.value(elem, rest, depth + 1)?);
        }
        Ok(Value::Array(items))
    }
}

/// Whether an array of this element type is text: a one-byte integer that BTF marks as a
/// character, or that is named `char` (compilers mark it signed, not BTF_INT_CHAR).
fn is_char(btf: &Btf, elem: &Type) -> bool {
    matches!(elem.kind, Kind::Int { size: 1, bits: 8, offset: 0, encoding } if encoding & INT_CHAR != 0 || btf.name(elem) == "char")
}

fn float(bytes: &[u8]) -> Value {
    let number = match *bytes {
        [a, b, c, d] => f64::from(f32::from_le_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => f64::from_le_bytes([a, b, c, d, e, f, g, h]),
        _ => return Value::String(crate::hex(bytes)),
    };
    match serde_json::Number::from_f64(number) {
        Some(n) => Value::Number(n),
        None if number.is_nan() => Value::String("NaN".to_string()),
        None if number > 0.0 => Value::String("inf".to_string()),
        None => Value::String("-inf".to_string()),
    }
}
