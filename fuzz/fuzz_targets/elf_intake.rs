#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    // libfuzzer-sys aborts on every panic, before unwinding; the agent catches a
    // third-party parser's panic on purpose (elf::inspect), so let panics unwind: one
    // the code under test does not catch still aborts the run and is reported.
    init: std::panic::set_hook(Box::new(|_| {})),
    |data: &[u8]| agent::fuzz::elf_intake(data)
);
