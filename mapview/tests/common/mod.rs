//! Helpers the integration tests share: BTF compiled from C by clang, and BTF assembled by
//! hand for what clang 14 does not emit (ENUM64, old-style bitfields, data section layouts,
//! hostile blobs).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use object::{Object, ObjectSection};

/// The `.BTF` section of `tests/data/flow.c` built with `clang -target bpf -g -O2 -c`,
/// compiled once per test binary.
pub fn flow_btf() -> &'static [u8] {
    static BTF: OnceLock<Vec<u8>> = OnceLock::new();
    BTF.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flow.c");
        let out = dir.path().join("flow.o");
        let status = Command::new("clang")
            .args(["-target", "bpf", "-g", "-O2", "-c"])
            .arg(&source)
            .arg("-o")
            .arg(&out)
            .status()
            .expect("run clang (apt-get install clang)");
        assert!(status.success(), "clang failed on {}", source.display());
        let elf = std::fs::read(&out).expect("read flow.o");
        let file = object::File::parse(&*elf).expect("parse flow.o");
        let section = file.section_by_name(".BTF").expect("flow.o has no .BTF section");
        section.data().expect(".BTF data").to_vec()
    })
}

/// BTF kinds, as numbered in the kernel's `btf.rst`.
pub mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const CONST: u32 = 10;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// Assembles a little-endian BTF blob type by type.
pub struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Default for Blob {
    fn default() -> Self {
        Blob { types: Vec::new(), strings: vec![0], next_id: 1 }
    }
}

impl Blob {
    /// Adds a string and returns its offset ("" is offset 0).
    pub fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    /// Adds one type record and its payload words; returns its id.
    pub fn ty(&mut self, name: &str, kind: u32, flag: bool, vlen: u32, size_or_type: u32, payload: &[u32]) -> u32 {
        let name_off = self.name(name);
        let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
        for word in [name_off, info, size_or_type].iter().chain(payload) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    /// An INT: encoding 1 = signed, 2 = char, 4 = bool.
    pub fn int(&mut self, name: &str, size: u32, encoding: u32, offset: u32, bits: u32) -> u32 {
        self.ty(name, kind::INT, false, 0, size, &[(encoding << 24) | (offset << 16) | bits])
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [24, 0, self.types.len() as u32, self.types.len() as u32, self.strings.len() as u32] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}
