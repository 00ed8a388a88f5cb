//! Untrusted input never panics: every truncation and many corruptions of a real blob, and
//! the biggest real blob there is, the running kernel's.

mod common;

use mapview::Btf;

/// Everything a caller can ask of a parsed blob, on values of all zeros and all ones.
fn exercise(btf: &Btf) {
    for id in 0..64 {
        let _ = btf.type_name(id);
        let _ = btf.size_of(id);
        let _ = btf.field_names(id);
        for byte in [0, 0xff] {
            let _ = btf.decode(id, &[byte; 160]);
        }
        for path in ["a", "inner_b", "hdr.y", "counts[1]", "flags"] {
            if let Ok(field) = btf.field(id, path) {
                let _ = field.decode(btf, &[0xff; 160]);
                let _ = field.read_u64(btf, &[0xff; 160]);
            }
        }
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let good = common::flow_btf();
    for len in 0..good.len() {
        assert!(Btf::parse(&good[..len]).is_err(), "a blob cut to {len} of {} bytes parsed", good.len());
    }
}

#[test]
fn corrupted_blobs_never_panic() {
    let good = common::flow_btf();
    exercise(&Btf::parse(good).unwrap());
    for at in 0..good.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bad = good.to_vec();
            bad[at] ^= flip;
            if let Ok(btf) = Btf::parse(&bad) {
                exercise(&btf);
            }
        }
    }
}

#[test]
fn randomly_corrupted_blobs_never_panic() {
    let good = common::flow_btf();
    // A fixed xorshift sequence: reproducible, no dependency.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let mut bad = good.to_vec();
        for _ in 0..1 + next() % 8 {
            let at = 24 + (next() as usize) % (bad.len() - 24); // keep the header, reach the types
            bad[at] = next() as u8;
        }
        if let Ok(btf) = Btf::parse(&bad) {
            exercise(&btf);
        }
    }
}

#[test]
fn the_kernels_own_btf_parses_and_decodes() {
    let Ok(raw) = std::fs::read("/sys/kernel/btf/vmlinux") else {
        eprintln!("skipped: no /sys/kernel/btf/vmlinux on this machine");
        return;
    };
    let btf = Btf::parse(&raw).expect("vmlinux BTF parses");
    let task = btf.find("struct task_struct").expect("vmlinux has struct task_struct");
    let size = btf.size_of(task).expect("task_struct has a size") as usize;
    let value = btf.decode(task, &vec![0; size]).expect("a zeroed task_struct decodes");
    assert_eq!(value["pid"], serde_json::json!(0));
    assert_eq!(value["comm"], serde_json::json!(""));
    let pid = btf.field(task, "pid").expect("task_struct.pid");
    assert_eq!(pid.read_u64(&btf, &vec![0; size]).unwrap(), 0);
    assert_eq!(btf.type_name(pid.type_id), "pid_t");
    assert!(btf.field(task, "se.load.weight").is_ok(), "nested field path");
    assert!(btf.field_names(task).contains(&"comm".to_string()));
}

#[test]
fn every_struct_and_union_of_the_kernel_decodes_from_zeros_and_ones() {
    let Ok(raw) = std::fs::read("/sys/kernel/btf/vmlinux") else {
        eprintln!("skipped: no /sys/kernel/btf/vmlinux on this machine");
        return;
    };
    let btf = Btf::parse(&raw).expect("vmlinux BTF parses");
    let mut decoded = 0;
    for id in 1.. {
        let name = btf.type_name(id);
        if name == format!("<no type {id}>") {
            break;
        }
        let Some(size) = btf.size_of(id) else { continue };
        if !(name.starts_with("struct ") || name.starts_with("union ")) {
            continue;
        }
        for byte in [0, 0xff] {
            if let Err(e) = btf.decode(id, &vec![byte; size as usize]) {
                panic!("{name} (type {id}) filled with {byte:#x}: {e}");
            }
        }
        decoded += 1;
    }
    assert!(decoded > 1000, "only {decoded} structs and unions in vmlinux");
}
