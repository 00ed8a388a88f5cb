//! Decoding real clang output: the types of `tests/data/flow.c`.

mod common;

use mapview::{Btf, Error};
use serde_json::json;

fn btf() -> Btf {
    Btf::parse(common::flow_btf()).expect("clang's BTF parses")
}

/// A `struct flow` with every field set to something recognisable.
fn flow_bytes() -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b[0..4].copy_from_slice(&0x0a00_0001u32.to_le_bytes()); // saddr
    b[4..6].copy_from_slice(&8080u16.to_le_bytes()); // port
    b[6] = 6; // proto
    b[7] = 5 | (0x1f << 3); // flags:3 = 5, pad:5 = 31
    b[8..12].copy_from_slice(b"eth0"); // name, NUL padded
    b[16..20].copy_from_slice(&17u32.to_le_bytes()); // k = KIND_UDP
    b[20..24].copy_from_slice(&0x0002_0001u32.to_le_bytes()); // union { a; b; }
    b[24..32].copy_from_slice(&1u64.to_le_bytes()); // counts[0]
    b[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // counts[1]
    b[40..42].copy_from_slice(&1u16.to_le_bytes()); // hdr.x
    b[42..44].copy_from_slice(&2u16.to_le_bytes()); // hdr.y
    b[44..48].copy_from_slice(&(-5i32).to_le_bytes()); // temp
    b[48] = 1; // ok
    b[56..64].copy_from_slice(&0xffff_8880_0000_1000u64.to_le_bytes()); // ptr
    b[64..68].copy_from_slice(&1.5f32.to_le_bytes()); // f
    b[72..80].copy_from_slice(&(-2.25f64).to_le_bytes()); // d
    b[80..96].copy_from_slice(&((1u128 << 64) + 1).to_le_bytes()); // big
    b[96] = 0xd | (6 << 4); // sbits:4 = -3, kbits:5 = KIND_TCP (its top bit, in b[97], is 0)
    b[98..101].copy_from_slice(&[1, 2, 3]); // raw
    b[104..108].copy_from_slice(&u32::MAX.to_le_bytes()); // s = SIGN_NEG
    b[108..112].copy_from_slice(&42u32.to_le_bytes()); // inner_a
    b[112..114].copy_from_slice(&[1, 2]); // inner_b / inner_c
    b
}

#[test]
fn types_are_found_by_name_and_kind() {
    let btf = btf();
    let flow = btf.find("struct flow").expect("struct flow");
    assert_eq!(btf.find("flow"), Some(flow));
    assert_eq!(btf.type_name(flow), "struct flow");
    let alias = btf.find("flow_t").expect("flow_t");
    assert_ne!(alias, flow);
    assert_eq!(btf.type_name(alias), "flow_t");
    assert_eq!(btf.type_name(btf.find("union u").unwrap()), "union u");
    assert_eq!(btf.type_name(btf.find("enum kind").unwrap()), "enum kind");
    assert_eq!(btf.find("struct u"), None, "u is a union");
    assert_eq!(btf.find("counter"), None, "variables are not types");
    assert_eq!(btf.find("nope"), None);
}

#[test]
fn sizes_resolve_through_typedefs() {
    let btf = btf();
    assert_eq!(btf.size_of(btf.find("flow_t").unwrap()), Some(128));
    assert_eq!(btf.size_of(btf.find("__u16").unwrap()), Some(2));
    assert_eq!(btf.size_of(btf.find("union u").unwrap()), Some(4));
    assert_eq!(btf.size_of(0), None, "void has no size");
    assert_eq!(btf.size_of(100_000), None);
}

#[test]
fn field_types_are_spelled_as_in_c() {
    let btf = btf();
    let flow = btf.find("flow_t").unwrap();
    let spelled = |path: &str| btf.type_name(btf.field(flow, path).unwrap().type_id);
    assert_eq!(spelled("saddr"), "__u32");
    assert_eq!(spelled("name"), "char[8]");
    assert_eq!(spelled("k"), "enum kind");
    assert_eq!(spelled("counts"), "__u64[2]");
    assert_eq!(spelled("hdr"), "struct {...}");
    assert_eq!(spelled("ptr"), "void *");
    assert_eq!(spelled("raw"), "const volatile __u8[3]");
    assert_eq!(spelled("big"), "unsigned __int128");
    assert_eq!(btf.type_name(99_999), "<no type 99999>");
}

#[test]
fn a_whole_struct_decodes_to_exact_json() {
    let btf = btf();
    let flow = btf.find("flow_t").unwrap();
    let value = btf.decode(flow, &flow_bytes()).unwrap();
    assert_eq!(
        value,
        json!({
            "saddr": 167772161, "port": 8080, "proto": 6, "flags": 5, "pad": 31,
            "name": "eth0", "k": "KIND_UDP", "a": 131073, "b": 1,
            "counts": [1, u64::MAX], "hdr": {"x": 1, "y": 2}, "temp": -5, "ok": true,
            "ptr": "0xffff888000001000", "f": 1.5, "d": -2.25, "big": "0x10000000000000001",
            "sbits": -3, "kbits": "KIND_TCP", "raw": [1, 2, 3], "s": "SIGN_NEG",
            "inner_a": 42, "inner_b": 513, "inner_c": [1, 2],
        })
    );
}

#[test]
fn field_names_are_in_declaration_order_with_anonymous_members_flattened() {
    let btf = btf();
    let names = btf.field_names(btf.find("flow_t").unwrap());
    let expected = [
        "saddr", "port", "proto", "flags", "pad", "name", "k", "a", "b", "counts", "hdr", "temp", "ok", "ptr", "f",
        "d", "big", "sbits", "kbits", "raw", "s", "inner_a", "inner_b", "inner_c",
    ];
    assert_eq!(names, expected);
    assert!(btf.field_names(btf.find("__u32").unwrap()).is_empty());
}

#[test]
fn unknown_enum_values_and_unprintable_names_fall_back_to_numbers() {
    let btf = btf();
    let flow = btf.find("flow_t").unwrap();
    let mut bytes = flow_bytes();
    bytes[16] = 99; // k: no enumerator
    bytes[8..12].copy_from_slice(&[0xff, 0x01, b'a', 0]); // name: not text
    bytes[104..108].copy_from_slice(&1u32.to_le_bytes()); // s = SIGN_POS
    let value = btf.decode(flow, &bytes).unwrap();
    assert_eq!(value["k"], json!(99));
    assert_eq!(value["name"], json!([-1, 1, 97, 0, 0, 0, 0, 0]), "char is signed");
    assert_eq!(value["s"], json!("SIGN_POS"));
}

#[test]
fn unions_show_every_member() {
    let btf = btf();
    let u = btf.find("union u").unwrap();
    assert_eq!(btf.decode(u, &[1, 2, 3, 4]).unwrap(), json!({"word": 0x0403_0201, "bytes": [1, 2, 3, 4]}));
}

#[test]
fn short_values_are_errors_and_long_ones_are_cut() {
    let btf = btf();
    let flow = btf.find("flow_t").unwrap();
    let bytes = flow_bytes();
    let err = btf.decode(flow, &bytes[..127]).unwrap_err();
    assert_eq!(err, Error::ShortValue { type_name: "flow_t".to_string(), need: 128, have: 127 });
    assert!(err.to_string().contains("is this the right map"), "{err}");
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0xaa; 8]); // per-CPU padding, say
    assert_eq!(btf.decode(flow, &longer).unwrap(), btf.decode(flow, &bytes).unwrap());
}

#[test]
fn field_paths_locate_nested_indexed_anonymous_and_bit_fields() {
    let btf = btf();
    let flow = btf.find("flow_t").unwrap();
    let bytes = flow_bytes();
    let at = |path: &str| btf.field(flow, path).unwrap();

    let y = at("hdr.y");
    assert_eq!((y.bit_offset, y.bit_size), (336, 0));
    assert_eq!(y.read_u64(&btf, &bytes).unwrap(), 2);
    assert_eq!(at("counts[1]").bit_offset, 256);
    assert_eq!(at("counts[1]").read_u64(&btf, &bytes).unwrap(), u64::MAX);
    assert_eq!(at("inner_b").bit_offset, 896, "found through two anonymous members");
    assert_eq!(at("inner_c[1]").read_u64(&btf, &bytes).unwrap(), 2);

    let flags = at("flags");
    assert_eq!((flags.bit_offset, flags.bit_size), (56, 3));
    assert_eq!(flags.read_u64(&btf, &bytes).unwrap(), 5);
    assert_eq!(at("pad").read_u64(&btf, &bytes).unwrap(), 31);
    assert_eq!(at("kbits").read_u64(&btf, &bytes).unwrap(), 6);
    assert_eq!(at("kbits").decode(&btf, &bytes).unwrap(), json!("KIND_TCP"));
    assert_eq!(at("sbits").decode(&btf, &bytes).unwrap(), json!(-3));
    assert_eq!(at("k").read_u64(&btf, &bytes).unwrap(), 17);
    assert_eq!(at("ok").read_u64(&btf, &bytes).unwrap(), 1);

    assert_eq!(at("name").decode(&btf, &bytes).unwrap(), json!("eth0"));
    assert_eq!(at("hdr").decode(&btf, &bytes).unwrap(), json!({"x": 1, "y": 2}));
    assert_eq!(at("counts").decode(&btf, &bytes).unwrap(), json!([1, u64::MAX]));
}

#[test]
fn fields_that_are_not_counters_say_why() {
    let btf = btf();
    let flow = btf.find("flow_t").unwrap();
    let bytes = flow_bytes();
    let read = |path: &str| btf.field(flow, path).unwrap().read_u64(&btf, &bytes).unwrap_err();

    assert_eq!(read("name"), Error::NotAnInteger { type_name: "char[8]".to_string() });
    assert_eq!(read("temp"), Error::OutOfRange { type_name: "int".to_string(), value: "-5".to_string() });
    assert!(matches!(read("sbits"), Error::OutOfRange { .. }));
    assert!(matches!(read("big"), Error::OutOfRange { .. }));
    assert!(matches!(read("f"), Error::NotAnInteger { .. }));
    let short = btf.field(flow, "inner_b").unwrap().read_u64(&btf, &bytes[..100]).unwrap_err();
    assert!(matches!(short, Error::ShortValue { need: 114, have: 100, .. }), "{short}");
}

#[test]
fn bad_field_paths_name_what_exists() {
    let btf = btf();
    let flow = btf.find("flow_t").unwrap();
    let err = btf.field(flow, "hdr.z").unwrap_err();
    assert_eq!(err.to_string(), "`struct {...}` has no field `z`; its fields are: x, y");
    let err = btf.field(flow, "port_").unwrap_err();
    assert!(err.to_string().starts_with("`flow_t` has no field `port_`; its fields are: saddr, port, proto,"), "{err}");
    let err = btf.field(flow, "proto.x").unwrap_err();
    assert_eq!(err.to_string(), "`proto`: `__u8` is not a struct or union, so it has no field `x`");
    let err = btf.field(flow, "flags.x").unwrap_err();
    assert!(matches!(err, Error::NotComposite { .. }));
    let err = btf.field(flow, "counts[2]").unwrap_err();
    assert_eq!(err.to_string(), "`counts`: `__u64[2]` has no element [2]");
    assert!(matches!(btf.field(flow, "hdr[0]").unwrap_err(), Error::BadIndex { .. }));
    assert!(matches!(btf.field(flow, "hdr..x").unwrap_err(), Error::BadPath { .. }));
    let err = btf.field(btf.find("__u32").unwrap(), "port").unwrap_err();
    assert_eq!(err.to_string(), "`__u32` is not a struct or union, so it has no field `port`");
}
