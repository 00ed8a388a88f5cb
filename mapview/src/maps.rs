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
