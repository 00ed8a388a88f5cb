//! BTF assembled by hand: the kinds and forms clang 14 does not emit, and hostile blobs.

mod common;

use common::{Blob, kind};
use mapview::{Btf, Error};
use serde_json::json;

#[test]
fn enum64_matches_64_bit_values_signed_and_unsigned() {
    let mut blob = Blob::default();
    let (big, small) = (blob.name("BIG"), blob.name("SMALL"));
    let unsigned = blob.ty("wide", kind::ENUM64, false, 2, 8, &[big, 0, 1 << 8, small, 1, 0]);
    let neg = blob.name("NEG");
    let signed = blob.ty("swide", kind::ENUM64, true, 1, 8, &[neg, -2i32 as u32, u32::MAX]);
    let btf = Btf::parse(&blob.build()).unwrap();

    assert_eq!(btf.type_name(unsigned), "enum wide");
    assert_eq!(btf.decode(unsigned, &(1u64 << 40).to_le_bytes()).unwrap(), json!("BIG"));
    assert_eq!(btf.decode(unsigned, &1u64.to_le_bytes()).unwrap(), json!("SMALL"));
    assert_eq!(btf.decode(unsigned, &u64::MAX.to_le_bytes()).unwrap(), json!(u64::MAX));
    assert_eq!(btf.decode(signed, &(-2i64).to_le_bytes()).unwrap(), json!("NEG"));
    assert_eq!(btf.decode(signed, &(-7i64).to_le_bytes()).unwrap(), json!(-7));
}

#[test]
fn small_signed_enums_match_values_stored_as_32_bits() {
    let mut blob = Blob::default();
    let (minus, two) = (blob.name("MINUS_ONE"), blob.name("TWO"));
    let e = blob.ty("tiny", kind::ENUM, true, 2, 1, &[minus, u32::MAX, two, 2]);
    let btf = Btf::parse(&blob.build()).unwrap();
    assert_eq!(btf.decode(e, &[0xff]).unwrap(), json!("MINUS_ONE"));
    assert_eq!(btf.decode(e, &[2]).unwrap(), json!("TWO"));
    assert_eq!(btf.decode(e, &[0xfe]).unwrap(), json!(-2));
}

#[test]
fn bitfields_without_kind_flag_take_their_bits_from_the_int() {
    let mut blob = Blob::default();
    let u32_ = blob.int("unsigned int", 4, 0, 0, 32);
    let nibble = blob.int("unsigned int", 4, 0, 2, 4); // 4 bits, 2 bits into its word
    let (a, b) = (blob.name("a"), blob.name("b"));
    let s = blob.ty("old", kind::STRUCT, false, 2, 8, &[a, u32_, 0, b, nibble, 32]);
    let btf = Btf::parse(&blob.build()).unwrap();

    let mut bytes = [0u8; 8];
    bytes[0] = 1;
    bytes[4] = 0b11_1100 | 0b1100_0011; // b = 0b1111 at bits 2..6; the rest belongs to others
    assert_eq!(btf.decode(s, &bytes).unwrap(), json!({"a": 1, "b": 15}));
    let b = btf.field(s, "b").unwrap();
    assert_eq!((b.bit_offset, b.bit_size), (34, 4));
    assert_eq!(b.read_u64(&btf, &bytes).unwrap(), 15);
}

#[test]
fn data_sections_decode_as_their_variables() {
    let mut blob = Blob::default();
    let u32_ = blob.int("unsigned int", 4, 0, 0, 32);
    let hits = blob.ty("hits", kind::VAR, false, 0, u32_, &[1]);
    let drops = blob.ty("drops", kind::VAR, false, 0, u32_, &[1]);
    let bss = blob.ty(".bss", kind::DATASEC, false, 2, 8, &[hits, 0, 4, drops, 4, 4]);
    let btf = Btf::parse(&blob.build()).unwrap();

    assert_eq!(btf.find(".bss"), Some(bss));
    let bytes = [3, 0, 0, 0, 9, 0, 0, 0];
    assert_eq!(btf.decode(bss, &bytes).unwrap(), json!({"hits": 3, "drops": 9}));
    assert_eq!(btf.field_names(bss), ["hits", "drops"]);
    assert_eq!(btf.field(bss, "drops").unwrap().read_u64(&btf, &bytes).unwrap(), 9);
}

#[test]
fn pointers_functions_and_tags_are_spelled_as_in_c() {
    let mut blob = Blob::default();
    let int = blob.int("int", 4, 1, 0, 32);
    let char_ = blob.int("char", 1, 1, 0, 8);
    let void_ptr = blob.ty("", kind::PTR, false, 0, 0, &[]);
    let proto = blob.ty("", kind::FUNC_PROTO, false, 2, int, &[0, void_ptr, 0, 0]);
    let fn_ptr = blob.ty("", kind::PTR, false, 0, proto, &[]);
    let const_char = blob.ty("", kind::CONST, false, 0, char_, &[]);
    let str_ptr = blob.ty("", kind::PTR, false, 0, const_char, &[]);
    let const_ptr = blob.ty("", kind::CONST, false, 0, str_ptr, &[]);
    let fwd = blob.ty("file", kind::FWD, false, 0, 0, &[]);
    let rcu = blob.ty("rcu", kind::TYPE_TAG, false, 0, fwd, &[]);
    let rcu_ptr = blob.ty("", kind::PTR, false, 0, rcu, &[]);
    let btf = Btf::parse(&blob.build()).unwrap();

    assert_eq!(btf.type_name(fn_ptr), "int (*)(void *, ...)");
    assert_eq!(btf.type_name(proto), "int (void *, ...)");
    assert_eq!(btf.type_name(str_ptr), "const char *");
    assert_eq!(btf.type_name(const_ptr), "const char * const");
    assert_eq!(btf.type_name(rcu_ptr), "struct file __rcu *");
    assert_eq!(btf.decode(rcu_ptr, &[0x10, 0, 0, 0, 0, 0, 0, 0]).unwrap(), json!("0x10"));
    assert_eq!(btf.decode(fwd, &[0; 64]).unwrap_err(), Error::NoLayout { type_name: "struct file".to_string() });
    assert!(matches!(btf.decode(proto, &[0; 64]), Err(Error::NoLayout { .. })));
    assert!(matches!(btf.decode(0, &[0; 64]), Err(Error::NoLayout { .. })));
}

#[test]
fn odd_numbers_become_strings() {
    let mut blob = Blob::default();
    let float = blob.ty("float", kind::FLOAT, false, 0, 4, &[]);
    let long_double = blob.ty("long double", kind::FLOAT, false, 0, 16, &[]);
    let i128_ = blob.int("__int128", 16, 1, 0, 128);
    let btf = Btf::parse(&blob.build()).unwrap();

    assert_eq!(btf.decode(float, &f32::NAN.to_le_bytes()).unwrap(), json!("NaN"));
    assert_eq!(btf.decode(float, &f32::NEG_INFINITY.to_le_bytes()).unwrap(), json!("-inf"));
    assert_eq!(btf.decode(long_double, &[1; 16]).unwrap(), json!(mapview::hex(&[1; 16])));
    assert_eq!(btf.decode(i128_, &(-1i128).to_le_bytes()).unwrap(), json!(format!("{:#x}", u128::MAX)));
    assert_eq!(btf.decode(i128_, &5i128.to_le_bytes()).unwrap(), json!("0x5"), "one JSON type per field");
}

#[test]
fn reference_cycles_stop_at_the_depth_limit() {
    let mut blob = Blob::default();
    // typedef a -> typedef b -> typedef a
    let a = blob.ty("a", kind::TYPEDEF, false, 0, 2, &[]);
    blob.ty("b", kind::TYPEDEF, false, 0, a, &[]);
    // struct s { s inner; } and struct t { t self_[1]; }
    let inner = blob.name("inner");
    let s = blob.ty("s", kind::STRUCT, false, 1, 4, &[inner, 3, 0]);
    let arr = blob.ty("", kind::ARRAY, false, 0, 0, &[5, 0, 1]);
    let t = blob.ty("t", kind::STRUCT, false, 1, 4, &[inner, arr, 0]);
    assert_eq!(t, 5);
    let konst = blob.ty("", kind::CONST, false, 0, 6, &[]); // const of itself
    let btf = Btf::parse(&blob.build()).unwrap();

    assert!(matches!(btf.decode(a, &[0; 8]), Err(Error::TooDeep { .. })));
    assert_eq!(btf.size_of(a), None);
    assert_eq!(btf.type_name(a), "a");
    assert!(btf.type_name(konst).starts_with("const const const") && btf.type_name(konst).ends_with("..."));
    assert!(matches!(btf.decode(konst, &[0; 8]), Err(Error::TooDeep { .. })));
    assert!(matches!(btf.decode(s, &[0; 8]), Err(Error::TooDeep { .. })));
    assert!(matches!(btf.decode(t, &[0; 8]), Err(Error::TooDeep { .. })));
    assert!(btf.field(s, "inner.inner.inner").is_ok(), "a path is only as deep as it is written");
    assert_eq!(btf.field_names(s), ["inner"]);
}

#[test]
fn billions_of_empty_structs_are_refused_not_allocated() {
    let mut blob = Blob::default();
    let empty = blob.ty("empty", kind::STRUCT, false, 0, 0, &[]);
    let many = blob.ty("", kind::ARRAY, false, 0, 0, &[empty, 0, u32::MAX]);
    let btf = Btf::parse(&blob.build()).unwrap();
    assert_eq!(btf.size_of(many), Some(0));
    assert!(matches!(btf.decode(many, &[]), Err(Error::TooLarge { .. })));
}

#[test]
fn self_referencing_fan_outs_stay_cheap() {
    let mut blob = Blob::default();
    // int (*)(p, p, ... 1000 times) where p is that very pointer type.
    let proto = blob.ty("", kind::FUNC_PROTO, false, 1000, 2, &[0, 2].repeat(1000));
    let ptr = blob.ty("", kind::PTR, false, 0, proto, &[]);
    // struct bomb { struct bomb; struct bomb; ... 1000 anonymous members of itself };
    let bomb = blob.ty("bomb", kind::STRUCT, false, 1000, 4, &[0, 3, 0].repeat(1000));
    let btf = Btf::parse(&blob.build()).unwrap();

    assert!(btf.type_name(ptr).len() < 10_000);
    assert!(btf.type_name(ptr).ends_with("...)"), "{}", btf.type_name(ptr));
    assert!(matches!(btf.decode(bomb, &[0; 4]), Err(Error::TooLarge { .. } | Error::TooDeep { .. })));
    assert!(btf.field_names(bomb).is_empty());
    assert!(btf.field(bomb, "x").is_err());
}

/// A valid header followed by `types` and a string section of just "\0a\0".
fn with_types(types: &[u32]) -> Vec<u8> {
    let mut blob = Vec::new();
    blob.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
    let types_len = types.len() as u32 * 4;
    for word in [24, 0, types_len, types_len, 3] {
        blob.extend_from_slice(&u32::to_le_bytes(word));
    }
    types.iter().for_each(|w| blob.extend_from_slice(&w.to_le_bytes()));
    blob.extend_from_slice(b"\0a\0");
    blob
}

#[test]
fn bad_headers_say_what_is_wrong() {
    let good = Blob::default().build();
    assert_eq!(Btf::parse(&good).unwrap().field_names(0), Vec::<String>::new());

    let mut swapped = good.clone();
    swapped.swap(0, 1);
    assert_eq!(Btf::parse(&swapped).unwrap_err(), Error::BigEndian);
    assert_eq!(Btf::parse(b"\x7fELF").unwrap_err(), Error::BadMagic { found: 0x457f });
    assert!(matches!(Btf::parse(&[]), Err(Error::Truncated(_))));
    assert!(matches!(Btf::parse(&good[..20]), Err(Error::Truncated(_))));

    let mut version = good.clone();
    version[2] = 2;
    assert!(Btf::parse(&version).unwrap_err().to_string().contains("version 2"));
    let mut hdr_len = good.clone();
    hdr_len[4] = 8;
    assert!(matches!(Btf::parse(&hdr_len), Err(Error::BadHeader(_))));
    let mut str_len = good.clone();
    str_len[20] = 200;
    assert!(Btf::parse(&str_len).unwrap_err().to_string().contains("string section"));
    let mut no_nul = good.clone();
    *no_nul.last_mut().unwrap() = b'x';
    assert!(matches!(Btf::parse(&no_nul), Err(Error::BadHeader(_))));
}

#[test]
fn bad_types_say_what_is_wrong() {
    let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
    let cases: [(&[u32], &str); 8] = [
        (&[0, 20 << 24, 0], "unknown kind 20"),
        (&[0, 0, 0], "unknown kind 0"),
        (&[0, info(kind::TYPEDEF, 0), 7], "refers to type 7 but the blob's last type is 1 (split BTF"),
        (&[9, info(kind::PTR, 0), 0], "name offset 9 is past the string section"),
        (&[0, info(kind::INT, 0), 3, 8], "integer of 3 bytes"),
        (&[0, info(kind::INT, 0), 1, 9], "integer bits 0+9 do not fit its 1 bytes"),
        (&[0, info(kind::STRUCT, 2), 4, 1, 0, 0], "type section ends inside type 1"),
        (&[0, info(kind::ENUM, 0), 3], "enum of 3 bytes"),
    ];
    for (types, message) in cases {
        let err = Btf::parse(&with_types(types)).unwrap_err().to_string();
        assert!(err.contains(message), "{types:?}: {err:?} should say {message:?}");
    }
}
