//! Checks on an ELF object before anything reaches the kernel: size, format, which
//! functions, global variables and maps it has. Errors list what *is* there, so the
//! user can fix a typo without reaching for llvm-objdump.

use std::collections::BTreeMap;

use aya_obj::obj::{EbpfSectionKind, ProgramSection};
use crds::ProgramType;
// The largest object any source may carry (images; the operator holds inline and
// ConfigMap objects to 1 MiB).
use crds::limits::MAX_IMAGE_BYTECODE_BYTES as MAX_BYTECODE_BYTES;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::error::{AgentError, Reason, Result};

/// A map definition as the ELF declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// What an ELF object contains.
#[derive(Debug)]
pub struct ElfInfo {
    /// Function name -> the program type its section declares (None: a section bpfleet
    /// does not manage, e.g. `sk_msg`).
    pub programs: BTreeMap<String, Option<ProgramType>>,
    /// Global variable name -> (size in bytes, section).
    pub globals: BTreeMap<String, (u64, String)>,
    /// User-declared maps (not the `.rodata`/`.data`/`.bss` data maps).
    pub maps: BTreeMap<String, MapDef>,
    /// The object has CO-RE relocations (resolved against the kernel's BTF at load).
    pub core_relocations: bool,
}

fn section_type(s: &ProgramSection) -> Option<ProgramType> {
    Some(match s {
        ProgramSection::Xdp { .. } => ProgramType::Xdp,
        ProgramSection::SchedClassifier => ProgramType::Tc,
        ProgramSection::TracePoint => ProgramType::Tracepoint,
        ProgramSection::RawTracePoint => ProgramType::RawTracepoint,
        ProgramSection::FEntry { .. } => ProgramType::Fentry,
        ProgramSection::FExit { .. } => ProgramType::Fexit,
        ProgramSection::KProbe => ProgramType::Kprobe,
        ProgramSection::KRetProbe => ProgramType::Kretprobe,
        ProgramSection::UProbe { .. } => ProgramType::Uprobe,
        ProgramSection::URetProbe { .. } => ProgramType::Uretprobe,
        ProgramSection::CgroupSkb { .. } => ProgramType::CgroupSkb,
        ProgramSection::Lsm { .. } => ProgramType::Lsm,
        _ => return None,
    })
}

/// The object's `.BTF` section, parsed (what metrics and shared maps check fields and
/// types against); None when the object has none. Errors in words.
pub fn btf(bytes: &[u8]) -> std::result::Result<Option<mapview::Btf>, String> {
    let file = object::File::parse(bytes).map_err(|e| e.to_string())?;
    let Some(section) = file.section_by_name(".BTF") else { return Ok(None) };
    let data = section.data().map_err(|e| format!("the object's BTF: {e}"))?;
    mapview::Btf::parse(data).map(Some).map_err(|e| format!("the object's BTF: {e}"))
}

/// Parse and summarise an object. Fails with a reason a user can act on.
pub fn inspect(bytes: &[u8]) -> Result<ElfInfo> {
    if bytes.len() > MAX_BYTECODE_BYTES {
        return Err(AgentError::new(
            Reason::BytecodeTooLarge,
            format!("the object is {} bytes; the limit is {MAX_BYTECODE_BYTES} bytes", bytes.len()),
        ));
    }
    let file = object::File::parse(bytes).map_err(|e| {
        AgentError::new(Reason::MalformedElf, format!("not an ELF object ({e}); build it with clang -target bpf"))
    })?;
    if file.architecture() != object::Architecture::Bpf {
        return Err(AgentError::new(
            Reason::MalformedElf,
            format!("the ELF object is for {:?}, not eBPF; build it with clang -target bpf", file.architecture()),
        ));
    }
    // A 32-bit or foreign-endian header parses, but aya then finds no programs: say why.
    if !file.is_64() {
        return Err(AgentError::new(
            Reason::MalformedElf,
            "the ELF object is 32-bit (ELFCLASS32); eBPF objects are 64-bit: build it with clang -target bpf",
        ));
    }
    if file.is_little_endian() != cfg!(target_endian = "little") {
        let (theirs, ours, target) =
            if file.is_little_endian() { ("little", "big", "bpfeb") } else { ("big", "little", "bpfel") };
        return Err(AgentError::new(
            Reason::MalformedElf,
            format!(
                "the ELF object is {theirs}-endian but this node is {ours}-endian: build it with clang -target {target} (or -target bpf on the node's architecture)"
            ),
        ));
    }
    let obj = parse_object(bytes).map_err(|e| {
        // aya's BTF errors ("no BTF parsed for object", "BTF error") do not say what to do.
        let hint = if e.is_btf() {
            "; maps in SEC(\".maps\") and global data need the object's BTF: build it with clang -g -target bpf"
        } else {
            "; build it with clang -g -O2 -target bpf"
        };
        AgentError::new(Reason::MalformedElf, format!("cannot parse the eBPF object: {e}{hint}"))
    })?;

    let programs = obj.programs.iter().map(|(name, p)| (name.clone(), section_type(&p.section))).collect();
    let maps = obj
        .maps
        .iter()
        .filter(|(_, m)| matches!(m.section_kind(), EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps))
        .map(|(name, m)| {
            let def = MapDef {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                flags: m.map_flags(),
            };
            (name.clone(), def)
        })
        .collect();
    let mut globals = BTreeMap::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Data {
            continue;
        }
        let (Ok(name), Some(idx)) = (sym.name(), sym.section_index()) else { continue };
        let Ok(section) = file.section_by_index(idx) else { continue };
        let Ok(sname) = section.name() else { continue };
        if [".rodata", ".data", ".bss"].iter().any(|p| sname.starts_with(p)) && !name.is_empty() {
            globals.insert(name.to_string(), (sym.size(), sname.to_string()));
        }
    }
    Ok(ElfInfo { programs, globals, maps, core_relocations: obj.has_btf_relocations() })
}

/// Why aya-obj did not parse an object.
#[derive(Debug)]
enum ParseFailure {
    Refused(aya_obj::ParseError),
    /// The parser panicked; the panic's message.
    Panicked(String),
}

impl ParseFailure {
    /// The object's BTF is missing or unreadable.
    fn is_btf(&self) -> bool {
        matches!(self, Self::Refused(aya_obj::ParseError::BtfError(_) | aya_obj::ParseError::NoBTF))
    }
}

impl std::fmt::Display for ParseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) => e.fmt(f),
            Self::Panicked(why) => write!(f, "the parser failed on malformed input ({why})"),
        }
    }
}

/// aya-obj 0.3 panics on some malformed BTF (a `.BTF.ext` record naming a string offset
/// outside `.BTF`, found by fuzzing): such an object is refused like any other bad one
/// instead of taking the request down.
fn parse_object(bytes: &[u8]) -> std::result::Result<aya_obj::Object, ParseFailure> {
    match std::panic::catch_unwind(|| aya_obj::Object::parse(bytes)) {
        Ok(parsed) => parsed.map_err(ParseFailure::Refused),
        Err(panic) => {
            let why =
                panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
            Err(ParseFailure::Panicked(why.unwrap_or_default()))
        }
    }
}

impl ElfInfo {
    /// Whether loading `programs` of this object needs the kernel's BTF: CO-RE
    /// relocations, or a program that attaches through a kernel function's BTF id.
    pub fn needs_kernel_btf(&self, programs: impl IntoIterator<Item = ProgramType>) -> bool {
        self.core_relocations
            || programs.into_iter().any(|t| matches!(t, ProgramType::Fentry | ProgramType::Fexit | ProgramType::Lsm))
    }

    /// The function must exist and its section must declare the requested type.
    pub fn check_program(&self, name: &str, wanted: ProgramType) -> Result<()> {
        match self.programs.get(name) {
            None => Err(AgentError::for_program(
                Reason::ProgramNotFound,
                name,
                format!(
                    "function {name:?} is not a program in the object; it has: {}",
                    join_or_none(self.programs.keys())
                ),
            )),
            Some(Some(t)) if *t == wanted => Ok(()),
            Some(other) => Err(AgentError::for_program(
                Reason::InvalidSpec,
                name,
                format!(
                    "function {name:?} is compiled as a {} program (by its ELF section), but the spec says type {wanted}",
                    other.map(|t| t.as_str()).unwrap_or("different kind of")
                ),
            )),
        }
    }

    /// Every variable must exist in a data section, with exactly the given size.
    pub fn check_globals(&self, globals: &[(crds::names::GlobalName, Vec<u8>)]) -> Result<()> {
        for (name, value) in globals {
            match self.globals.get(name.as_str()) {
                None => {
                    return Err(AgentError::new(
                        Reason::GlobalDataInvalid,
                        format!(
                            "globalData variable {name} is not in the object; its global variables are: {}",
                            join_or_none(self.globals.keys())
                        ),
                    ));
                }
                Some((size, section)) if *size != value.len() as u64 => {
                    return Err(AgentError::new(
                        Reason::GlobalDataInvalid,
                        format!(
                            "globalData variable {name} is {size} bytes in the object ({section}) but the value given is {} bytes",
                            value.len()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn join_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() { "(none)".to_string() } else { v.join(", ") }
}

#[cfg(test)]
mod tests {
    use aya_obj::ParseError;
    use aya_obj::btf::BtfError;

    use super::ParseFailure;

    #[test]
    fn only_btf_errors_get_the_btf_hint() {
        assert!(ParseFailure::Refused(ParseError::NoBTF).is_btf());
        assert!(ParseFailure::Refused(ParseError::BtfError(BtfError::InvalidHeader)).is_btf());
        assert!(!ParseFailure::Refused(ParseError::InvalidProgramCode).is_btf());
        // A map or section that names BTF is not a BTF error.
        assert!(!ParseFailure::Refused(ParseError::InvalidMapDefinition { name: "BTF".into() }).is_btf());
        assert!(!ParseFailure::Panicked("index outside .BTF".into()).is_btf());
    }
}
