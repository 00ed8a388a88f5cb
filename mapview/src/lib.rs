//! Decoding eBPF map keys and values with the map's BTF.
//!
//! `kubectl bpfleet maps` shows map entries as JSON instead of the hex bytes the kernel hands
//! out, and the map exporter turns chosen fields of each entry into Prometheus labels and
//! values. Both get the map's BTF blob (the kernel keeps it for every map loaded with BTF)
//! and its key and value type ids, and do:
//!
//! ```no_run
//! # fn demo(raw_btf: &[u8], value_type_id: u32, value: &[u8]) -> Result<(), mapview::Error> {
//! let btf = mapview::Btf::parse(raw_btf)?;
//! let json = btf.decode(value_type_id, value)?; // {"saddr": 167772161, "proto": 6, ...}
//! let packets = btf.field(value_type_id, "counts[0]")?; // resolved once per metric
//! let n = packets.read_u64(&btf, value)?;
//! # Ok(()) }
//! ```
//!
//! The blob and the bytes come from outside the process, so nothing here panics or allocates
//! without bound on bad input: the limits are [`MAX_TYPES`] and [`MAX_DEPTH`].

mod btf;
mod decode;
mod error;
mod field;
mod maps;
mod parse;

pub use btf::Btf;
pub use error::Error;
pub use field::Field;

/// Most types a blob may hold. vmlinux has about 150,000; this leaves room and stops a blob
/// from making the parser allocate without bound.
pub const MAX_TYPES: usize = 1 << 20;

/// How deeply types may nest (typedef chains, struct in array in struct...). Real types stay
/// far below; BTF with a reference cycle hits this instead of overflowing the stack.
pub const MAX_DEPTH: u32 = 32;

/// Lower-case hex bytes separated by spaces, as bpftool prints keys and values
/// (`"0a 00 00 00"`): the fallback for maps without BTF and for raw output.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_spaced_lower_case_bytes() {
        assert_eq!(super::hex(&[0x0a, 0, 0xff, 0x10]), "0a 00 ff 10");
        assert_eq!(super::hex(&[]), "");
    }
}
