//! The parsed BTF: one [`Type`] per id, the string section, and the lookups every other part
//! needs (names, resolving typedefs and qualifiers, sizes, C spellings).

use crate::{Error, MAX_DEPTH};

/// How many types [`Btf::type_name`] visits for one spelling: far more than any real C type
/// needs, few enough that hostile BTF cannot make a name cost more than a moment.
const SPELL_STEPS: u32 = 256;

/// Pointers are 64 bits: eBPF is a 64-bit machine, and map BTF comes from BPF objects.
pub(crate) const PTR_SIZE: u32 = 8;

/// BTF_INT_SIGNED, BTF_INT_CHAR, BTF_INT_BOOL: the `encoding` bits of an INT.
pub(crate) const INT_SIGNED: u8 = 1;
pub(crate) const INT_CHAR: u8 = 2;
pub(crate) const INT_BOOL: u8 = 4;

/// Parsed BTF: the types of one standalone blob (ids from 1; id 0 is `void`) and its strings.
///
/// Build it with [`Btf::parse`]; everything after parsing only reads, so one `Btf` can serve
/// many decodes (and threads).
#[derive(Debug, Clone)]
pub struct Btf {
    /// Indexed by type id; `types[0]` is `void`.
    pub(crate) types: Vec<Type>,
    /// The string section, checked at parse time to start and end with NUL.
    pub(crate) strings: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(crate) struct Type {
    pub name_off: u32,
    pub kind: Kind,
}

/// One BTF kind with the payload this crate uses. Sizes are validated at parse time.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Void,
    Int {
        size: u32,
        encoding: u8,
        offset: u8,
        bits: u8,
    },
    Ptr {
        target: u32,
    },
    Array {
        elem: u32,
        len: u32,
    },
    /// STRUCT or UNION. `bitfield_form` is the kind_flag: member offsets carry a bitfield size.
    Composite {
        union: bool,
        size: u32,
        bitfield_form: bool,
        members: Vec<Member>,
    },
    /// ENUM or ENUM64 (`wide`).
    Enum {
        size: u32,
        signed: bool,
        wide: bool,
        values: Vec<Enumerator>,
    },
    Fwd {
        union: bool,
    },
    Typedef {
        target: u32,
    },
    Volatile {
        target: u32,
    },
    Const {
        target: u32,
    },
    Restrict {
        target: u32,
    },
    TypeTag {
        target: u32,
    },
    Func {
        proto: u32,
    },
    FuncProto {
        ret: u32,
        params: Vec<u32>,
    },
    Var {
        target: u32,
    },
    Datasec {
        size: u32,
        vars: Vec<SecVar>,
    },
    Float {
        size: u32,
    },
    DeclTag {
        target: u32,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub name_off: u32,
    pub type_id: u32,
    /// Raw `offset` word: a bit offset, or bitfield size << 24 | bit offset in bitfield form.
    pub offset: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Enumerator {
    pub name_off: u32,
    /// ENUM: the 32-bit word zero-extended; ENUM64: the whole 64 bits.
    pub value: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct SecVar {
    pub type_id: u32,
    pub offset: u32,
}

/// A named part of a struct, union or data section, located in bits from its start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Child<'a> {
    /// Empty for an anonymous struct or union member (and for unnamed padding).
    pub name: &'a str,
    pub type_id: u32,
    pub bit_offset: u64,
    /// The bitfield's width, or 0 for a member that is not a bitfield.
    pub bit_size: u32,
}

impl Kind {
    /// The type a typedef, qualifier, type tag or variable stands for: what resolving skips.
    fn alias_of(&self) -> Option<u32> {
        match *self {
            Kind::Typedef { target }
            | Kind::Volatile { target }
            | Kind::Const { target }
            | Kind::Restrict { target }
            | Kind::TypeTag { target }
            | Kind::Var { target } => Some(target),
            _ => None,
        }
    }
}

impl Btf {
    pub(crate) fn get(&self, id: u32) -> Result<&Type, Error> {
        self.types.get(id as usize).ok_or(Error::NoSuchType(id))
    }

    /// The string at `off`; offsets were checked at parse time, so this only falls back to ""
    /// for offsets that never came from this blob.
    pub(crate) fn str_at(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    pub(crate) fn name(&self, ty: &Type) -> &str {
        self.str_at(ty.name_off)
    }

    /// Follows typedefs, qualifiers, type tags and variables to the type that has the layout.
    pub(crate) fn resolve(&self, id: u32) -> Result<(u32, &Type), Error> {
        let mut id = id;
        for _ in 0..=MAX_DEPTH {
            let ty = self.get(id)?;
            match ty.kind.alias_of() {
                Some(target) => id = target,
                None => return Ok((id, ty)),
            }
        }
        Err(Error::TooDeep { type_name: self.type_name(id), limit: MAX_DEPTH })
    }

    /// The members of a struct or union, or the variables of a data section, in declaration
    /// order; nothing for any other type.
    fn children(&self, ty: &Type) -> Result<Vec<Child<'_>>, Error> {
        match &ty.kind {
            Kind::Composite { bitfield_form, members, .. } => members
                .iter()
                .map(|m| {
                    let (bit_offset, bit_size) = self.member_bits(*bitfield_form, m)?;
                    Ok(Child { name: self.str_at(m.name_off), type_id: m.type_id, bit_offset, bit_size })
                })
                .collect(),
            Kind::Datasec { vars, .. } => Ok(vars
                .iter()
                // Data sections of `.ksyms` also list functions; only variables have values.
                .filter_map(|v| match self.get(v.type_id) {
                    Ok(var @ Type { kind: Kind::Var { target }, .. }) => Some(Child {
                        name: self.name(var),
                        type_id: *target,
                        bit_offset: u64::from(v.offset) * 8,
                        bit_size: 0,
                    }),
                    _ => None,
                })
                .collect()),
            _ => Ok(Vec::new()),
        }
    }

    /// The named fields of a struct, union or data section `id` in declaration order, with
    /// the fields of anonymous struct and union members in their place (C names them as if
    /// they were the parent's), offsets from the start of `id`. Nothing for other types.
    ///
    /// Each member visited costs one of `budget`, so hostile BTF (a struct of thousands of
    /// anonymous members of itself) runs out instead of running for hours.
    pub(crate) fn fields(&self, id: u32, budget: &mut u64) -> Result<Vec<Child<'_>>, Error> {
        let mut out = Vec::new();
        self.flatten(id, 0, budget, 0, &mut out)?;
        Ok(out)
    }

    fn flatten<'b>(
        &'b self,
        id: u32,
        base: u64,
        budget: &mut u64,
        depth: u32,
        out: &mut Vec<Child<'b>>,
    ) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep { type_name: self.type_name(id), limit: MAX_DEPTH });
        }
        let (_, ty) = self.resolve(id)?;
        for child in self.children(ty)? {
            *budget = budget.checked_sub(1).ok_or_else(|| Error::TooLarge { type_name: self.type_name(id) })?;
            let bit_offset = base + child.bit_offset;
            if !child.name.is_empty() {
                out.push(Child { bit_offset, ..child });
            } else if let (_, Type { kind: Kind::Composite { .. }, .. }) = self.resolve(child.type_id)? {
                self.flatten(child.type_id, bit_offset, budget, depth + 1, out)?;
            }
            // Other unnamed members (padding bitfields) hold nothing to show.
        }
        Ok(())
    }

    /// Where a struct or union member is: (bit offset, bitfield size or 0).
    ///
    /// With the kind_flag set the offset word carries the bitfield size in its top byte.
    /// Without it, a bitfield is a member whose integer type is narrower than its bytes,
    /// and that integer's own bit offset adds to the member's.
    pub(crate) fn member_bits(&self, bitfield_form: bool, m: &Member) -> Result<(u64, u32), Error> {
        if bitfield_form {
            return Ok((u64::from(m.offset & 0x00ff_ffff), m.offset >> 24));
        }
        if let (_, Type { kind: Kind::Int { size, offset, bits, .. }, .. }) = self.resolve(m.type_id)?
            && (*offset != 0 || u32::from(*bits) != size * 8)
        {
            return Ok((u64::from(m.offset) + u64::from(*offset), u32::from(*bits)));
        }
        Ok((m.offset.into(), 0))
    }

    /// Size in bytes of a value of type `id`, after resolving typedefs and qualifiers.
    ///
    /// `None` for types without a layout (void, forward declarations, functions), unknown ids
    /// and arrays whose size overflows 32 bits.
    pub fn size_of(&self, id: u32) -> Option<u32> {
        self.layout_size(id).ok()
    }

    /// [`Btf::size_of`] with the reason when there is no size.
    pub(crate) fn layout_size(&self, id: u32) -> Result<u32, Error> {
        let mut id = id;
        let mut count = 1u32;
        // Arrays of arrays are walked in a loop, multiplying their lengths.
        for _ in 0..=MAX_DEPTH {
            let (rid, ty) = self.resolve(id)?;
            let size = match &ty.kind {
                Kind::Int { size, .. }
                | Kind::Composite { size, .. }
                | Kind::Enum { size, .. }
                | Kind::Datasec { size, .. }
                | Kind::Float { size } => *size,
                Kind::Ptr { .. } => PTR_SIZE,
                Kind::Array { elem, len } => {
                    count = count.checked_mul(*len).ok_or_else(|| Error::bad_type(rid, "array of more than 4 GiB"))?;
                    id = *elem;
                    continue;
                }
                _ => return Err(Error::NoLayout { type_name: self.type_name(rid) }),
            };
            return size.checked_mul(count).ok_or_else(|| Error::bad_type(rid, "array of more than 4 GiB"));
        }
        Err(Error::TooDeep { type_name: self.type_name(id), limit: MAX_DEPTH })
    }

    /// The id of the first type called `name`, for tests and for users who name a type.
    ///
    /// `"struct flow"`, `"union u"` and `"enum e"` match only that kind; a bare name matches a
    /// struct, union, enum, typedef, integer, float or data section (`".bss"`) of that name.
    /// Forward declarations, functions and variables are never returned: they have no layout.
    pub fn find(&self, name: &str) -> Option<u32> {
        let tagged = |tag: &str| name.strip_prefix(tag).and_then(|rest| rest.strip_prefix(' ')).map(str::trim);
        let (bare, wanted): (&str, fn(&Kind) -> bool) = if let Some(bare) = tagged("struct") {
            (bare, |k| matches!(k, Kind::Composite { union: false, .. }))
        } else if let Some(bare) = tagged("union") {
            (bare, |k| matches!(k, Kind::Composite { union: true, .. }))
        } else if let Some(bare) = tagged("enum") {
            (bare, |k| matches!(k, Kind::Enum { .. }))
        } else {
            (name.trim(), |k| {
                matches!(
                    k,
                    Kind::Composite { .. }
                        | Kind::Enum { .. }
                        | Kind::Typedef { .. }
                        | Kind::Int { .. }
                        | Kind::Float { .. }
                        | Kind::Datasec { .. }
                )
            })
        };
        let found = self.types.iter().position(|ty| wanted(&ty.kind) && !bare.is_empty() && self.name(ty) == bare)?;
        u32::try_from(found).ok()
    }

    /// How a C programmer would spell type `id`: `"struct flow_key"`, `"__u64"`,
    /// `"unsigned int"`, `"char[16]"`, `"enum proto"`, `"struct x *"`, `"int (*)(void *)"`.
    ///
    /// Meant for messages and column headers, so it never fails: an unknown id reads
    /// `"<no type N>"`, and a spelling that would visit more than a few hundred types (deep
    /// nesting, reference cycles, huge function prototypes) ends in `"..."`.
    pub fn type_name(&self, id: u32) -> String {
        let mut left = SPELL_STEPS;
        self.spell(id, &mut left)
    }

    /// Spells `id`, spending one of `left` per type visited so hostile BTF cannot make it
    /// explode (a prototype whose parameters are pointers to itself...).
    fn spell(&self, id: u32, left: &mut u32) -> String {
        let Some(rest) = left.checked_sub(1) else { return "...".to_string() };
        *left = rest;
        let Ok(ty) = self.get(id) else { return format!("<no type {id}>") };
        let name = self.name(ty);
        let tagged = |tag: &str| if tag.is_empty() { "{...}".to_string() } else { tag.to_string() };
        match &ty.kind {
            Kind::Void => "void".to_string(),
            Kind::Int { .. } | Kind::Float { .. } | Kind::Typedef { .. } | Kind::Func { .. } | Kind::Datasec { .. } => {
                name.to_string()
            }
            Kind::Ptr { target } => match self.get(*target).map(|t| &t.kind) {
                Ok(Kind::FuncProto { ret, params }) => self.spell_proto(*ret, params, "(*)", left),
                _ => format!("{} *", self.spell(*target, left)),
            },
            Kind::Array { elem, len } => format!("{}[{len}]", self.spell(*elem, left)),
            Kind::Composite { union: false, .. } => format!("struct {}", tagged(name)),
            Kind::Composite { union: true, .. } => format!("union {}", tagged(name)),
            Kind::Enum { .. } => format!("enum {}", tagged(name)),
            Kind::Fwd { union } => format!("{} {name}", if *union { "union" } else { "struct" }),
            Kind::Const { target } => self.qualify("const", *target, left),
            Kind::Volatile { target } => self.qualify("volatile", *target, left),
            Kind::Restrict { target } => format!("{} restrict", self.spell(*target, left)),
            // Spelled as the kernel's macros are: btf_type_tag("rcu") is `__rcu`.
            Kind::TypeTag { target } => format!("{} __{name}", self.spell(*target, left)),
            Kind::FuncProto { ret, params } => self.spell_proto(*ret, params, "", left),
            Kind::Var { target } => format!("{} {name}", self.spell(*target, left)),
            Kind::DeclTag { target } => {
                format!("{} __attribute__((btf_decl_tag(\"{name}\")))", self.spell(*target, left))
            }
        }
    }

    /// A qualifier goes before what it qualifies, except a pointer: `const char *` is a
    /// pointer to const, `char * const` a const pointer.
    fn qualify(&self, qualifier: &str, target: u32, left: &mut u32) -> String {
        match self.get(target).map(|t| &t.kind) {
            Ok(Kind::Ptr { .. }) => format!("{} {qualifier}", self.spell(target, left)),
            _ => format!("{qualifier} {}", self.spell(target, left)),
        }
    }

    fn spell_proto(&self, ret: u32, params: &[u32], declarator: &str, left: &mut u32) -> String {
        let ret = self.spell(ret, left);
        let mut args = Vec::new();
        for (i, &param) in params.iter().enumerate() {
            if *left == 0 {
                args.push("...".to_string());
                break;
            }
            // A last parameter of type 0 is the `...` of a variadic function.
            args.push(if param == 0 && i + 1 == params.len() { "...".to_string() } else { self.spell(param, left) });
        }
        let args = if args.is_empty() { "void".to_string() } else { args.join(", ") };
        if declarator.is_empty() { format!("{ret} ({args})") } else { format!("{ret} {declarator}({args})") }
    }
}
