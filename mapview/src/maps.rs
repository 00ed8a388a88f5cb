//! The key and value types of the maps an ELF object defines with BTF (`SEC(".maps")` in
//! C): what the agent checks a metric's fields against before it loads anything.

use crate::btf::{Btf, Kind};

impl Btf {
    /// The key and value type ids of the BTF-defined map `map` of an object's `.BTF`
    /// (its `.maps` section variable is a struct whose `key` and `value` members point to
    /// the types), or `None` when no such map is defined with BTF. A side is `None` when
    /// the map gives only its size (`key_size`), not its type.
    pub fn map_types(&self, map: &str) -> Option<(Option<u32>, Option<u32>)> {
        let section = self.types.iter().find_map(|t| match &t.kind {
            Kind::Datasec { vars, .. } if self.name(t) == ".maps" => Some(vars),
            _ => None,
        })?;
        let var = section.iter().find_map(|v| {
            let ty = self.types.get(v.type_id as usize)?;
            match ty.kind {
                Kind::Var { target } if self.name(ty) == map => Some(target),
                _ => None,
            }
        })?;
        let (_, def) = self.resolve(var).ok()?;
        let Kind::Composite { members, .. } = &def.kind else { return Some((None, None)) };
        let pointee = |member: &str| {
            let m = members.iter().find(|m| self.str_at(m.name_off) == member)?;
            match self.types.get(m.type_id as usize)?.kind {
                Kind::Ptr { target } => Some(target),
                _ => None,
            }
        };
        Some((pointee("key"), pointee("value")))
    }
}

impl Btf {
    /// A type's layout as a string two BTF blobs can compare: kinds, sizes, signedness,
    /// member names with their bit offsets and sizes, array lengths and enumerator values,
    /// through typedefs and qualifiers (whose names do not matter to the bytes). Two maps
    /// whose key and value layouts are equal read each other's bytes the same way.
    pub fn layout(&self, id: u32) -> Result<String, crate::Error> {
        let mut out = String::new();
        let mut budget = 4096u32;
        self.layout_into(id, 0, &mut budget, &mut out)?;
        Ok(out)
    }

    fn layout_into(&self, id: u32, depth: u32, budget: &mut u32, out: &mut String) -> Result<(), crate::Error> {
        use std::fmt::Write as _;
        *budget = budget.saturating_sub(1);
        if depth > crate::MAX_DEPTH || *budget == 0 {
            return Err(crate::Error::TooDeep { type_name: self.type_name(id), limit: crate::MAX_DEPTH });
        }
        let (_, ty) = self.resolve(id)?;
        match &ty.kind {
            Kind::Int { size, encoding, offset, bits } => {
                let _ = write!(out, "int({size},{encoding},{offset},{bits})");
            }
            Kind::Ptr { .. } => out.push_str("ptr"),
            Kind::Array { elem, len } => {
                let _ = write!(out, "[{len}]");
                self.layout_into(*elem, depth + 1, budget, out)?;
            }
            Kind::Composite { union, size, bitfield_form, members } => {
                let _ = write!(out, "{}({size}){{", if *union { "union" } else { "struct" });
                for m in members {
                    let (bit_offset, bit_size) = self.member_bits(*bitfield_form, m)?;
                    let _ = write!(out, "{}@{bit_offset}:{bit_size}=", self.str_at(m.name_off));
                    self.layout_into(m.type_id, depth + 1, budget, out)?;
                    out.push(',');
                }
                out.push('}');
            }
            Kind::Enum { size, signed, values, .. } => {
                let _ = write!(out, "enum({size},{signed}){{");
                for v in values {
                    let _ = write!(out, "{}={},", self.str_at(v.name_off), v.value);
                }
                out.push('}');
            }
            Kind::Float { size } => {
                let _ = write!(out, "float({size})");
            }
            other => {
                let _ = write!(out, "{other:?}");
            }
        }
        Ok(())
    }
}
