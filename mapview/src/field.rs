//! Naming one field of a key or value by a path such as `hdr.proto` or `counts[2]`: how the
//! exporter picks its labels and its number out of each map entry. The path is resolved once
//! against the BTF; reading it from every entry is then a bit-offset read.

use serde_json::Value;

use crate::Error;
use crate::btf::{Btf, Kind};

/// Members a field lookup may visit: real structs have hundreds, hostile BTF could nest
/// thousands of anonymous members of itself.
const FIELD_VISITS: u64 = 1 << 16;

/// Where a field is inside its containing key or value, as found by [`Btf::field`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's declared type (typedefs kept, so [`Btf::type_name`] shows what the source says).
    pub type_id: u32,
    /// Offset of the field's first bit from the start of the containing value.
    pub bit_offset: u32,
    /// Width of a bitfield, or 0 when the field is not a bitfield.
    pub bit_size: u32,
}

/// One step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'p> {
    Name(&'p str),
    Index(u64),
}

/// Splits `a.b[1][2].c` into steps. A path may start with an index when the value itself is
/// an array.
fn steps(path: &str) -> Result<Vec<Step<'_>>, Error> {
    let bad = |reason: &str| Error::BadPath { path: path.to_string(), reason: reason.to_string() };
    let mut steps = Vec::new();
    for (i, part) in path.split('.').enumerate() {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if name.is_empty() && (i > 0 || rest.is_empty()) {
            return Err(bad("a field name is empty"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad("field names are C identifiers (letters, digits, `_`)"));
        }
        if !name.is_empty() {
            steps.push(Step::Name(name));
        }
        while !rest.is_empty() {
            let (index, after) = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .ok_or_else(|| bad("an index is written `[N]` and ends the part of the path it is in"))?;
            steps.push(Step::Index(index.trim().parse().map_err(|_| bad("an index is a non-negative number"))?));
            rest = after;
        }
    }
    Ok(steps)
}

impl Btf {
    /// Finds the field at a dotted `path` (`"hdr.proto"`, `"counts[2]"`, `"addrs[1].port"`)
    /// inside a value of type `id`, looking through typedefs, qualifiers and anonymous
    /// struct/union members the way C does.
    ///
    /// Resolved once when a metric is configured, so a typo is reported up front with the
    /// fields that do exist, and reading each map entry is only an offset read.
    pub fn field(&self, id: u32, path: &str) -> Result<Field, Error> {
        let too_far = || Error::BadPath {
            path: path.to_string(),
            reason: "the field lies past anything a map value can hold".to_string(),
        };
        let mut at = (id, 0u64, 0u32);
        let mut walked = String::new();
        for step in steps(path)? {
            let (type_id, bit_offset, bit_size) = at;
            let (_, ty) = self.resolve(type_id)?;
            match step {
                Step::Name(name) => {
                    let is_container = matches!(ty.kind, Kind::Composite { .. } | Kind::Datasec { .. });
                    if !is_container || bit_size != 0 {
                        return Err(Error::NotComposite {
                            path: walked,
                            type_name: self.type_name(type_id),
                            field: name.to_string(),
                        });
                    }
                    let mut budget = FIELD_VISITS;
                    let found = self.fields(type_id, &mut budget)?.into_iter().find(|f| f.name == name);
                    let Some(child) = found else {
                        return Err(Error::NoSuchField {
                            type_name: self.type_name(type_id),
                            field: name.to_string(),
                            fields: self.field_names(type_id),
                        });
                    };
                    at = (child.type_id, bit_offset.checked_add(child.bit_offset).ok_or_else(too_far)?, child.bit_size);
                    if !walked.is_empty() {
                        walked.push('.');
                    }
                    walked.push_str(name);
                }
                Step::Index(index) => {
                    let bad_index =
                        || Error::BadIndex { path: walked.clone(), type_name: self.type_name(type_id), index };
                    let Kind::Array { elem, len } = ty.kind else { return Err(bad_index()) };
                    if index >= u64::from(len) {
                        return Err(bad_index());
                    }
                    let elem_size = self.layout_size(elem)?;
                    let offset = (index * u64::from(elem_size)).checked_mul(8).and_then(|o| o.checked_add(bit_offset));
                    at = (elem, offset.ok_or_else(too_far)?, 0);
                    walked.push_str(&format!("[{index}]"));
                }
            }
        }
        let (type_id, bit_offset, bit_size) = at;
        let bit_offset = u32::try_from(bit_offset).map_err(|_| too_far())?;
        Ok(Field { type_id, bit_offset, bit_size })
    }

    /// The fields a value of type `id` has at its top level, in declaration order (fields of
    /// anonymous members included, as C names them), so an error can list what a user could
    /// have meant. Empty for types without fields.
    pub fn field_names(&self, id: u32) -> Vec<String> {
        let mut budget = FIELD_VISITS;
        let fields = self.fields(id, &mut budget).unwrap_or_default();
        fields.into_iter().map(|f| f.name.to_string()).collect()
    }
}

impl Field {
    /// Reads the field out of the bytes of the whole key or value that contains it, as JSON
    /// by the rules of [`Btf::decode`].
    pub fn decode(&self, btf: &Btf, bytes: &[u8]) -> Result<Value, Error> {
        btf.decode_at(self.type_id, bytes, self.bit_offset.into(), self.bit_size)
    }

    /// Reads an integer, bool or enum field as a `u64`, for a counter or gauge value.
    ///
    /// A field of another type is an error, and so is a negative or wider-than-64-bit value:
    /// a metric must not silently wrap.
    pub fn read_u64(&self, btf: &Btf, bytes: &[u8]) -> Result<u64, Error> {
        let int = btf.int_at(self.type_id, bytes, self.bit_offset.into(), self.bit_size)?;
        let out_of_range = |value: String| Error::OutOfRange { type_name: btf.type_name(self.type_id), value };
        if let Some(negative) = int.negative() {
            return Err(out_of_range(negative.to_string()));
        }
        u64::try_from(int.bits).map_err(|_| out_of_range(int.bits.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Step, steps};

    #[test]
    fn paths_split_into_names_and_indexes() {
        assert_eq!(steps("hdr.proto").unwrap(), vec![Step::Name("hdr"), Step::Name("proto")]);
        assert_eq!(steps("counts[2]").unwrap(), vec![Step::Name("counts"), Step::Index(2)]);
        assert_eq!(steps("[1][0].a").unwrap(), vec![Step::Index(1), Step::Index(0), Step::Name("a")]);
    }

    #[test]
    fn malformed_paths_are_errors() {
        for bad in ["", ".", "a..b", "a.", "a[", "a[x]", "a[-1]", "a[1]b", "a b", "a[1].[2]"] {
            assert!(steps(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
