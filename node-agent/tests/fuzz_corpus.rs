//! Replays the committed cargo-fuzz corpora (`fuzz/corpus/<target>/`) through the same
//! functions the fuzz targets call, so every input the fuzzer kept (and every crash it
//! found, once fixed) is checked by a plain `cargo test`, without cargo-fuzz.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

/// Every input, each on its own so a panic names the file that caused it.
fn replay(target: &str, run: fn(&[u8])) {
    let mut failed = Vec::new();
    for path in corpus(target) {
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: these inputs panic (see the messages above): {failed:?}");
}

#[test]
fn fuzz_corpus_elf_intake() {
    replay("elf_intake", agent::fuzz::elf_intake);
}

#[test]
fn fuzz_corpus_manifest() {
    replay("manifest", agent::fuzz::manifest);
}

#[test]
fn fuzz_corpus_wire() {
    replay("wire", agent::fuzz::wire);
}

#[test]
fn fuzz_corpus_owner_record() {
    replay("owner_record", agent::fuzz::owner_record);
}

/// The seeds are real inputs, not noise the targets reject at the first byte.
#[test]
fn fuzz_seeds_are_accepted_inputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let record = std::fs::read(dir.join("owner_record/seed-record-v1")).unwrap();
    agent::store::parse_record_bytes(&record).unwrap();
    let elf = std::fs::read(dir.join("elf_intake/seed-xdp_counter.o")).unwrap();
    let info = agent::elf::inspect(&elf).unwrap();
    assert!(info.programs.contains_key("count_packets"));
}

/// Found by the elf_intake target: aya-obj panics on a `.BTF.ext` naming a string
/// outside `.BTF`; the object must be refused as malformed instead.
#[test]
fn malformed_btf_ext_is_refused_not_a_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/elf_intake");
    let bytes = std::fs::read(dir.join("crash-aya-btf-ext-string-offset")).unwrap();
    let err = agent::elf::inspect(&bytes).unwrap_err();
    assert_eq!(err.reason, agent::error::Reason::MalformedElf, "{err}");
}
