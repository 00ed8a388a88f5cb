//! The bad-input catalogue, agent side (docs/reliability.md, "Bad input catalogue"):
//! every case is an id, an input, the reason the user sees and words the message must
//! contain. Each is applied to a real agent core (or, for the wire and TLS cases, a real
//! agent process over mTLS) and must be refused with that reason, never as `Internal`,
//! and leave nothing behind. "Nothing" is read from the kernel and bpffs, not from the
//! agent's reports: bpftool's program and link lists, the owner's bpffs directory and
//! record, and for interface cases `bpftool net show`, `tc filter show` and `ip link`.
//!
//! All cases of one table run before the test fails, so one run lists every mismatch.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use agent::error::Reason;
use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;

static SERIAL: Mutex<()> = Mutex::new(());

/// One bad input for the agent core.
struct Case {
    id: &'static str,
    /// The manifest's spec (YAML); `bytecode` is replaced by `elf`.
    spec: String,
    elf: Vec<u8>,
    reason: Reason,
    words: &'static [&'static str],
}

fn case(id: &'static str, spec: String, elf: Vec<u8>, reason: Reason, words: &'static [&'static str]) -> Case {
    Case { id, spec, elf, reason, words }
}

fn xdp(iface: &str, function: &str) -> String {
    format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: {function}, type: XDP, xdp: {{interfaces: [{iface}], mode: Generic}}}}\n"
    )
}

fn tc(iface: &str, function: &str, priority: u16) -> String {
    format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: {function}, type: TC, tc: {{interfaces: [{iface}], direction: Ingress, priority: {priority}}}}}\n"
    )
}

fn tracepoint(function: &str, name: &str) -> String {
    format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: {function}, type: Tracepoint, tracepoint: {{names: [{name}]}}}}\n"
    )
}

fn with_globals(spec: String, globals: &str) -> String {
    spec.replacen("programs:", &format!("globalData: {{{globals}}}\nprograms:"), 1)
}

/// `xdp_counter.o` with `patch` applied to its bytes.
fn patched(object: &str, patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = object_bytes(object);
    patch(&mut b);
    b
}

/// `object` rewritten by llvm-objcopy with `args` (e.g. a section removed).
fn objcopy(object: &str, args: &str) -> Vec<u8> {
    let out = std::env::temp_dir().join(format!("{}.o", unique("objcopy")));
    sh(&format!("llvm-objcopy {args} {} {}", common::object(object).display(), out.display()));
    let b = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    b
}

/// `source` (under examples/bpf) compiled for `target` (e.g. bpfeb) into a temporary file.
fn compiled(source: &str, target: &str) -> Vec<u8> {
    let out = std::env::temp_dir().join(format!("{}.o", unique("cc")));
    sh(&format!(
        "clang -g -O2 -target {target} -mcpu=v3 -I/usr/include/$(uname -m)-linux-gnu -c {} -o {}",
        repo().join("examples/bpf").join(source).display(),
        out.display()
    ));
    let b = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    b
}

/// `object` with `symbol` moved (st_shndx) into section `to`: relocations that name it
/// then point at no map (llvm-objcopy refuses to remove `.maps` while it is referenced).
fn symbol_moved(object: &str, symbol: &str, to: &str) -> Vec<u8> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let mut b = object_bytes(object);
    let (at, index) = {
        let f = object::File::parse(&*b).unwrap();
        let (symtab, _) = f.section_by_name(".symtab").unwrap().file_range().unwrap();
        let sym = f.symbols().find(|s| s.name() == Ok(symbol)).unwrap();
        // Elf64_Sym is 24 bytes; st_shndx is the u16 at offset 6.
        (symtab as usize + sym.index().0 * 24 + 6, f.section_by_name(to).unwrap().index().0 as u16)
    };
    b[at..at + 2].copy_from_slice(&index.to_le_bytes());
    b
}

/// What the kernel and the interface look like, for before/after comparison.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// Programs whose (15-character) names are among the case's functions.
    programs: Vec<u64>,
    links: Vec<u64>,
    /// `bpftool net show dev`, `tc filter show` (both directions), the XDP part of `ip link`.
    interface: Option<String>,
}

fn ids(cmd: &str, names: &[String]) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(&sh(cmd)).unwrap();
    let mut out: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| names.is_empty() || names.iter().any(|n| p["name"].as_str() == Some(&n[..n.len().min(15)])))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    out.sort();
    out
}

fn snapshot(functions: &[String], iface: Option<&str>) -> Snapshot {
    let programs = ids("bpftool -j prog show", functions);
    let prog_set = programs.clone();
    let v: serde_json::Value = serde_json::from_str(&sh("bpftool -j link show")).unwrap();
    let mut links: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|p| prog_set.contains(&p)))
        .filter_map(|l| l["id"].as_u64())
        .collect();
    links.sort();
    let interface = iface.map(|i| {
        let xdp: Vec<String> = sh(&format!("ip -d link show dev {i}"))
            .split_whitespace()
            .filter(|w| w.starts_with("xdp") || w.starts_with("prog/xdp"))
            .map(str::to_string)
            .collect();
        format!(
            "{}\n{}\n{}\n{xdp:?}",
            sh(&format!("bpftool -j net show dev {i}")),
            sh(&format!("tc filter show dev {i} ingress 2>/dev/null || true")),
            sh(&format!("tc filter show dev {i} egress 2>/dev/null || true")),
        )
    });
    Snapshot { programs, links, interface }
}

/// Wait for the kernel to free what a failed apply released (RCU): up to 3 s.
fn settled(before: &Snapshot, functions: &[String], iface: Option<&str>) -> Snapshot {
    let mut now = snapshot(functions, iface);
    for _ in 0..60 {
        if now == *before {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = snapshot(functions, iface);
    }
    now
}

fn functions_of(spec: &str) -> Vec<String> {
    let spec: crds::BpfProgramSpec = serde_yaml::from_str(spec).unwrap();
    spec.programs.iter().map(|p| p.name.clone()).collect()
}

/// Runs one case on `agent`: refused with its reason and words, nothing left. Returns
/// the problems found (empty when the case passed).
fn run(agent: &TestAgent, rt: &tokio::runtime::Runtime, owner: &str, c: &Case, iface: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let functions = functions_of(&c.spec);
    let before = snapshot(&functions, iface);
    let result = rt.block_on(agent.manager.apply(input_bytes(owner, &c.spec, c.elf.clone())));
    match result {
        Ok(_) => {
            problems.push(format!("{}: accepted", c.id));
            let _ = rt.block_on(agent.manager.remove(&crds::names::OwnerUid::new(owner).unwrap()));
        }
        Err(e) => {
            if e.reason != c.reason {
                problems.push(format!("{}: reason {:?}, expected {:?}: {e}", c.id, e.reason, c.reason));
            }
            for w in c.words {
                if !e.message.contains(w) {
                    problems.push(format!("{}: message {:?} lacks {w:?}", c.id, e.message));
                }
            }
            println!("{:<40} {:<20} {}", c.id, e.reason.as_str(), e.message);
        }
    }
    let owner_pins: Vec<String> = agent.pins().into_iter().filter(|p| p.starts_with(owner)).collect();
    if !owner_pins.is_empty() {
        problems.push(format!("{}: left in bpffs: {owner_pins:?}", c.id));
    }
    if agent.state.join(format!("{owner}.json")).exists() {
        problems.push(format!("{}: owner record left", c.id));
    }
    let after = settled(&before, &functions, iface);
    if after != before {
        problems.push(format!("{}: kernel changed:\nbefore {before:?}\nafter  {after:?}", c.id));
    }
    problems
}

fn run_all(agent: &TestAgent, cases: &[Case], iface: Option<&str>) {
    let rt = rt();
    let mut problems = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        problems.extend(run(agent, &rt, &format!("cat-{i}"), c, iface));
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn catalogue_bytecode() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let veth = Veth::new();
    let agent = TestAgent::new();
    let x = |f: &str| xdp(&veth.host, f);
    let cases = vec![
        case("bytecode/empty", x("count_packets"), vec![], Reason::MalformedElf, &["not an ELF object"]),
        case(
            "bytecode/elf-header-only",
            x("count_packets"),
            patched("xdp_counter.o", |b| b.truncate(64)),
            Reason::MalformedElf,
            &[],
        ),
        case(
            "bytecode/truncated-in-section-table",
            x("count_packets"),
            patched("xdp_counter.o", |b| b.truncate(b.len() - 100)),
            Reason::MalformedElf,
            &[],
        ),
        case(
            "bytecode/elf-magic-then-garbage",
            x("count_packets"),
            (0..4096u32).map(|i| if i < 4 { b"\x7fELF"[i as usize] } else { (i * 7919 % 251) as u8 }).collect(),
            Reason::MalformedElf,
            &[],
        ),
        case(
            "bytecode/yaml-text",
            x("count_packets"),
            b"apiVersion: v1\nkind: ConfigMap\n".to_vec(),
            Reason::MalformedElf,
            &["not an ELF object"],
        ),
        case(
            "bytecode/wrong-machine-x86_64",
            x("count_packets"),
            patched("xdp_counter.o", |b| b[18..20].copy_from_slice(&62u16.to_le_bytes())),
            Reason::MalformedElf,
            &["not eBPF"],
        ),
        case(
            "bytecode/big-endian-header",
            x("count_packets"),
            patched("xdp_counter.o", |b| b[5] = 2),
            Reason::MalformedElf,
            &[],
        ),
        case(
            "bytecode/32-bit-class",
            x("count_packets"),
            patched("xdp_counter.o", |b| b[4] = 1),
            Reason::MalformedElf,
            &["32-bit", "clang -target bpf"],
        ),
        case(
            "bytecode/big-endian-bpfeb-object",
            x("count_packets"),
            compiled("xdp_counter.c", "bpfeb"),
            Reason::MalformedElf,
            &["big-endian", "clang -target bpfel"],
        ),
        case(
            "bytecode/section-table-offset-past-end",
            x("count_packets"),
            patched("xdp_counter.o", |b| {
                let len = b.len() as u64;
                b[40..48].copy_from_slice(&(len + 4096).to_le_bytes())
            }),
            Reason::MalformedElf,
            &[],
        ),
        case(
            "bytecode/no-btf-with-btf-maps",
            x("count_packets"),
            objcopy("xdp_counter.o", "--remove-section .BTF --remove-section .BTF.ext"),
            Reason::MalformedElf,
            &["no BTF", "clang -g"],
        ),
        case(
            "bytecode/relocation-to-missing-map",
            x("count_packets"),
            symbol_moved("xdp_counter.o", "packet_count", "license"),
            Reason::MalformedElf,
            &[".maps"],
        ),
        case(
            "bytecode/garbage-btf",
            x("count_packets"),
            {
                let out = std::env::temp_dir().join(format!("{}.btf", unique("btf")));
                std::fs::write(&out, vec![0xa5u8; 256]).unwrap();
                let b = objcopy("xdp_counter.o", &format!("--update-section .BTF={}", out.display()));
                let _ = std::fs::remove_file(&out);
                b
            },
            Reason::MalformedElf,
            &["BTF", "clang -g"],
        ),
        case(
            "bytecode/program-in-unknown-section",
            x("count_packets"),
            objcopy("xdp_counter.o", "--rename-section xdp=mystery"),
            Reason::MalformedElf,
            &["invalid program section `mystery`"],
        ),
    ];
    run_all(&agent, &cases, Some(&veth.host));
}

#[test]
fn catalogue_programs_and_globals() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let veth = Veth::new();
    let agent = TestAgent::new();
    let x = |f: &str| xdp(&veth.host, f);
    let cases = vec![
        case(
            "program/map-name-as-function",
            x("packet_count"),
            object_bytes("xdp_counter.o"),
            Reason::ProgramNotFound,
            &["\"packet_count\" is not a program", "count_packets"],
        ),
        case(
            "program/license-symbol-as-function",
            x("LICENSE"),
            object_bytes("xdp_counter.o"),
            Reason::ProgramNotFound,
            &["\"LICENSE\" is not a program"],
        ),
        case(
            "program/xdp-function-as-tracepoint",
            tracepoint("count_packets", "syscalls/sys_enter_openat"),
            object_bytes("xdp_counter.o"),
            Reason::InvalidSpec,
            &["compiled as a XDP program", "spec says type Tracepoint"],
        ),
        case(
            "program/tc-function-as-xdp",
            x("count_tc"),
            object_bytes("tc_counter.o"),
            Reason::InvalidSpec,
            &["spec says type XDP"],
        ),
        case(
            "program/xdp-function-as-tc",
            tc(&veth.host, "count_packets", 10),
            object_bytes("xdp_counter.o"),
            Reason::InvalidSpec,
            &["spec says type TC"],
        ),
        case(
            "program/tc-on-missing-interface",
            tc("nosuchif9", "count_tc", 10),
            object_bytes("tc_counter.o"),
            Reason::InterfaceNotFound,
            &["interface \"nosuchif9\" does not exist on this node"],
        ),
        case(
            "globals/name-of-a-map",
            with_globals(x("sampled_count"), "packets_seen: AQAAAA=="),
            object_bytes("global_data.o"),
            Reason::GlobalDataInvalid,
            &["packets_seen is not in the object", "SAMPLE_RATE"],
        ),
        case(
            "globals/name-of-a-function",
            with_globals(x("sampled_count"), "sampled_count: AQAAAA=="),
            object_bytes("global_data.o"),
            Reason::GlobalDataInvalid,
            &["sampled_count is not in the object"],
        ),
        case(
            "globals/too-long",
            with_globals(x("sampled_count"), "SAMPLE_RATE: AQAAAAAAAAA="),
            object_bytes("global_data.o"),
            Reason::GlobalDataInvalid,
            &["SAMPLE_RATE is 4 bytes", "given is 8 bytes"],
        ),
        case(
            "globals/object-without-globals",
            with_globals(x("count_packets"), "SAMPLE_RATE: AQAAAA=="),
            object_bytes("xdp_counter.o"),
            Reason::GlobalDataInvalid,
            &["SAMPLE_RATE is not in the object"],
        ),
        case(
            "globals/data-section-variable",
            with_globals(x("sampled_count"), "MAX_SAMPLES: AQAAAA==, SAMPLE_RATE: AQA="),
            object_bytes("global_data.o"),
            Reason::GlobalDataInvalid,
            &["MAX_SAMPLES is 8 bytes in the object (.data)", "given is 4 bytes"],
        ),
    ];
    run_all(&agent, &cases, Some(&veth.host));
}

/// Two owners on one node: the second is refused or ordered, and the first is untouched.
#[test]
fn catalogue_conflicts_between_owners() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = rt();
    let mut problems = Vec::new();

    // conflict/two-owners-xdp-one-interface
    let veth = Veth::new();
    let agent = TestAgent::new();
    let first = rt.block_on(agent.manager.apply(input("first", &xdp(&veth.host, "count_packets"), "xdp_counter.o")));
    let (first, _) = first.expect("first owner applies");
    let c = case(
        "conflict/two-owners-xdp-one-interface",
        xdp(&veth.host, "sampled_count"),
        object_bytes("global_data.o"),
        Reason::AttachFailed,
        &["another XDP program is already attached to this interface"],
    );
    problems.extend(run(&agent, &rt, "second", &c, Some(&veth.host)));
    let counter = map_pin(&first, "packet_count");
    let n = read_counter(&counter);
    veth.ping_from_ns(3);
    assert!(read_counter(&counter) >= n + 3, "the first owner's XDP program stopped counting");
    rt.block_on(agent.manager.remove(&crds::names::OwnerUid::new("first").unwrap())).unwrap();

    // conflict/foreign-xdp-program-on-interface: an XDP program bpfleet does not own
    // (loaded and attached with bpftool) is neither replaced nor detached.
    let foreign = format!("/sys/fs/bpf/{}", unique("foreign"));
    sh(&format!("bpftool prog load {} {foreign} type xdp", common::object("xdp_counter.o").display()));
    sh(&format!("bpftool net attach xdpgeneric pinned {foreign} dev {}", veth.host));
    let c = case(
        "conflict/foreign-xdp-program-on-interface",
        xdp(&veth.host, "sampled_count"),
        object_bytes("global_data.o"),
        Reason::AttachFailed,
        &["another XDP program is already attached to this interface"],
    );
    problems.extend(run(&agent, &rt, "after-foreign", &c, Some(&veth.host)));
    sh(&format!("bpftool net detach xdpgeneric dev {} && rm -f {foreign}", veth.host));
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

/// The same TC priority on one hook from two owners, for each TC backend: accepted,
/// not refused. Both are attached and both run (the programs return TC_ACT_UNSPEC, so
/// the chain goes on). Removing both leaves no filter.
#[test]
fn catalogue_same_tc_priority_is_accepted_and_both_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = rt();
    for backend in [agent::attach::TcBackend::Tcx, agent::attach::TcBackend::Clsact] {
        let veth = Veth::new();
        let agent = TestAgent::with_backend(backend);
        let spec = tc(&veth.host, "tc_mark_first", 10);
        let (a, _) = rt.block_on(agent.manager.apply(input("tc-a", &spec, "multi.o"))).expect("first TC owner");
        let b = rt.block_on(agent.manager.apply(input("tc-b", &spec, "multi.o")));
        let (b, _) = b.unwrap_or_else(|e| panic!("{backend:?}: same priority refused: {e}"));
        veth.ping_from_ns(3);
        let (sa, sb) = (read_counter(&map_pin(&a, "tc_first_seq")), read_counter(&map_pin(&b, "tc_first_seq")));
        assert!(sa > 0 && sb > 0, "{backend:?}: both must run (a={sa}, b={sb})");
        println!("tc/same-priority-two-owners {backend:?}: accepted, both run (a={sa}, b={sb} packets)");
        for o in ["tc-a", "tc-b"] {
            rt.block_on(agent.manager.remove(&crds::names::OwnerUid::new(o).unwrap())).unwrap();
        }
        let filters = sh(&format!("tc filter show dev {} ingress 2>/dev/null || true", veth.host));
        assert!(filters.trim().is_empty(), "{backend:?}: filters left: {filters}");
        let net = sh(&format!("bpftool -j net show dev {}", veth.host));
        assert!(!net.contains("tc_mark_first"), "{backend:?}: left attached: {net}");
    }
}

/// Tracepoints run at most 64 programs each (perf events, BPF_TRACE_MAX_PROGS): the
/// 65th owner on one tracepoint is refused in words, and the others keep running.
#[test]
fn catalogue_too_many_programs_on_one_tracepoint() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = rt();
    let agent = TestAgent::new();
    let spec = tracepoint("count_openat", "syscalls/sys_enter_getppid");
    let mut applied = Vec::new();
    let mut problems = Vec::new();
    for i in 0..80 {
        let owner = format!("tp-{i}");
        let functions = functions_of(&spec);
        let before = snapshot(&functions, None);
        match rt.block_on(agent.manager.apply(input(&owner, &spec, "tracepoint_openat.o"))) {
            Ok(_) => applied.push(owner),
            Err(e) => {
                println!("tracepoint/too-many-programs after {i}: {} {}", e.reason.as_str(), e.message);
                assert_eq!(e.reason, Reason::AttachFailed, "{e}");
                assert!(e.message.contains("syscalls/sys_enter_getppid"), "{e}");
                assert!(e.message.contains("64"), "the limit is not named: {e}");
                assert!(!agent.pins().iter().any(|p| p.starts_with(&owner)), "{:?}", agent.pins());
                let after = settled(&before, &functions, None);
                if after != before {
                    problems.push(format!("kernel changed:\nbefore {before:?}\nafter  {after:?}"));
                }
                break;
            }
        }
    }
    let count = applied.len();
    for o in applied {
        rt.block_on(agent.manager.remove(&crds::names::OwnerUid::new(&o).unwrap())).unwrap();
    }
    assert!(count < 80, "no limit reached after 80 owners");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- The wire and TLS: a real agent process, real mTLS ----

fn reason_of(status: &tonic::Status) -> &str {
    status.metadata().get("bpfleet-reason").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A client certificate named `bpfleet-operator`, signed by the test CA, valid only
/// within [not_before, not_after] (years).
fn issue_dated_client(dir: &Path, tag: &str, not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    // The test CA's name and key: what a signature chains to (rcgen here cannot parse PEM).
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "bpfleet test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec![agent::tls::testpki::CLIENT_NAME.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, agent::tls::testpki::CLIENT_NAME);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let (c, k) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// One List over a fresh connection with `tls`: Ok when the agent served it.
async fn call_with(url: &str, tls: tonic::transport::ClientTlsConfig) -> Result<(), String> {
    let call = async {
        let ch = connect(url, tls).await.map_err(|e| format!("{e:?}"))?;
        AgentClient::new(ch).list(v1::ListRequest::default()).await.map_err(|e| format!("{e:?}"))?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), call).await.unwrap_or_else(|_| Err("timed out".into()))
}

/// Serialized with the in-process cases: the tracepoint limit case loads the same
/// function this case counts in the kernel.
#[test]
fn catalogue_tls_clients_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    rt().block_on(catalogue_tls_clients_refused_async());
}

async fn catalogue_tls_clients_refused_async() {
    let dirs = Dirs::new("cattls");
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut good = agent.ready_client(dirs.client_tls()).await;
    let pki = &dirs.pki;
    let url = agent.url();
    let mut problems = Vec::new();
    let server = agent::tls::DEFAULT_SERVER_NAME;

    // Control: the same issuance with a validity around today is served, so the two
    // refusals below are about the dates and nothing else.
    let (c, k) = issue_dated_client(&pki.dir, "current", (2020, 1, 1), (2090, 1, 1));
    let current = agent::tls::client_config(Path::new(&c), Path::new(&k), &pki.ca_cert, server).unwrap();
    call_with(&url, current).await.expect("a currently valid dated certificate is served");
    let (c, k) = issue_dated_client(&pki.dir, "expired", (2020, 1, 1), (2021, 1, 1));
    let expired = agent::tls::client_config(Path::new(&c), Path::new(&k), &pki.ca_cert, server).unwrap();
    let (c, k) = issue_dated_client(&pki.dir, "future", (2090, 1, 1), (2091, 1, 1));
    let future = agent::tls::client_config(Path::new(&c), Path::new(&k), &pki.ca_cert, server).unwrap();
    // The CA rotated: the agent trusts the new one only; the client still has the old
    // CA's certificate (and trusts the new CA, so only the client side is stale).
    let old_dir = dirs.tmp.path().join("old-pki");
    std::fs::create_dir_all(&old_dir).unwrap();
    let old = agent::tls::testpki::TestPki::generate(&old_dir);
    let rotated = agent::tls::client_config(&old.client_cert, &old.client_key, &pki.ca_cert, server).unwrap();
    // The client trusts only the old CA: it must refuse the agent (no call reaches it).
    let stale_trust = agent::tls::client_config(&pki.client_cert, &pki.client_key, &old.ca_cert, server).unwrap();
    // The agent's own server certificate offered as a client certificate.
    let server_as_client = agent::tls::client_config(&pki.server_cert, &pki.server_key, &pki.ca_cert, server).unwrap();

    for (id, tls) in [
        ("tls/expired-client-certificate", expired),
        ("tls/not-yet-valid-client-certificate", future),
        ("tls/client-of-a-rotated-away-ca", rotated),
        ("tls/client-trusting-a-rotated-away-ca", stale_trust),
        ("tls/server-certificate-as-client", server_as_client),
    ] {
        match call_with(&url, tls).await {
            Ok(()) => problems.push(format!("{id}: served")),
            Err(e) => println!("{id:<40} refused: {}", e.chars().take(200).collect::<String>()),
        }
    }
    // The refusals did not disturb the agent: the operator is still served.
    good.list(v1::ListRequest::default()).await.expect("operator served after refusals");
    assert!(pins_under(&dirs.root).is_empty(), "{:?}", pins_under(&dirs.root));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Requests a client can build but the operator never sends: each is refused with
/// InvalidSpec (or the reason given) and words, and nothing reaches bpffs or the kernel.
/// Serialized with the in-process cases: the tracepoint limit case loads the same
/// function this case counts in the kernel.
#[test]
fn catalogue_garbage_requests_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    rt().block_on(catalogue_garbage_requests_refused_async());
}

async fn catalogue_garbage_requests_refused_async() {
    let dirs = Dirs::new("catwire");
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let tp = "  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n";
    let base = || apply_request("wire", tp, "tracepoint_openat.o");
    let dir = dirs.tmp.path().display().to_string();
    type Edit = Box<dyn Fn(&mut v1::ApplyRequest)>;
    let cases: Vec<(&str, Edit, tonic::Code, &str, &[&str])> = vec![
        (
            "wire/missing-owner",
            Box::new(|r| r.owner = None),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["owner is required"],
        ),
        (
            "wire/empty-owner-uid",
            Box::new(|r| r.owner.as_mut().unwrap().uid = String::new()),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["uid"],
        ),
        (
            "wire/owner-uid-path-traversal",
            Box::new(|r| r.owner.as_mut().unwrap().uid = "../../etc".into()),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["../../etc"],
        ),
        (
            "wire/garbage-revision",
            Box::new(|r| r.revision = "zz-not-hex".into()),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["revision \"zz-not-hex\" must be 16 lowercase hex characters"],
        ),
        (
            "wire/missing-bytecode",
            Box::new(|r| r.bytecode = None),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["bytecode is required"],
        ),
        (
            "wire/relative-bytecode-path",
            Box::new(|r| r.bytecode = Some(v1::apply_request::Bytecode::Path("x.o".into()))),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["must be absolute"],
        ),
        (
            "wire/dotdot-bytecode-path",
            Box::new(|r| r.bytecode = Some(v1::apply_request::Bytecode::Path("/tmp/../etc/passwd".into()))),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["without '..'"],
        ),
        (
            "wire/missing-bytecode-file",
            Box::new(|r| r.bytecode = Some(v1::apply_request::Bytecode::Path("/nonexistent/prog.o".into()))),
            tonic::Code::FailedPrecondition,
            "BytecodeNotFound",
            &["bytecode path /nonexistent/prog.o on this node is missing, not a regular file, unreadable, or outside"],
        ),
        (
            "wire/bytecode-path-is-a-directory",
            Box::new(move |r| r.bytecode = Some(v1::apply_request::Bytecode::Path(dir.clone()))),
            tonic::Code::FailedPrecondition,
            "BytecodeNotFound",
            &["on this node is missing, not a regular file, unreadable, or outside the allowed paths"],
        ),
        (
            "wire/unknown-program-type",
            Box::new(|r| r.programs[0].r#type = "Kprobe2".into()),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["unknown type \"Kprobe2\"", "Tracepoint"],
        ),
        (
            "wire/program-without-attach-block",
            Box::new(|r| r.programs[0].attach = None),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["tracepoint"],
        ),
        (
            "wire/no-programs",
            Box::new(|r| r.programs.clear()),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["programs"],
        ),
        (
            "wire/empty-program-name",
            Box::new(|r| r.programs[0].name = String::new()),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["name"],
        ),
        (
            "wire/unknown-xdp-mode",
            Box::new(|r| {
                r.programs[0].r#type = "XDP".into();
                r.programs[0].attach = Some(v1::program::Attach::Xdp(v1::Xdp {
                    interfaces: vec!["lo".into()],
                    mode: "Turbo".into(),
                    in_pods: false,
                }));
            }),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["unknown XDP mode \"Turbo\"", "Generic"],
        ),
        (
            "wire/unknown-tc-direction",
            Box::new(|r| {
                r.programs[0].r#type = "TC".into();
                r.programs[0].attach = Some(v1::program::Attach::Tc(v1::Tc {
                    interfaces: vec!["lo".into()],
                    direction: "Sideways".into(),
                    priority: 1,
                    in_pods: false,
                }));
            }),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["unknown direction \"Sideways\"", "Ingress"],
        ),
        (
            "wire/tc-priority-out-of-range",
            Box::new(|r| {
                r.programs[0].r#type = "TC".into();
                r.programs[0].attach = Some(v1::program::Attach::Tc(v1::Tc {
                    interfaces: vec!["lo".into()],
                    direction: "Ingress".into(),
                    priority: 70000,
                    in_pods: false,
                }));
            }),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["priority"],
        ),
        (
            "wire/unknown-map-policy",
            Box::new(|r| {
                r.maps = vec![v1::MapPolicy {
                    name: "openat_count".into(),
                    on_upgrade: "Forever".into(),
                    ..Default::default()
                }]
            }),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["unknown onUpgrade \"Forever\"", "Keep or Recreate"],
        ),
        (
            "wire/global-name-not-an-identifier",
            Box::new(|r| r.global_data = [("not a name!".to_string(), vec![1u8].into())].into()),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["not a name!"],
        ),
        (
            "wire/empty-global-value",
            Box::new(|r| r.global_data = [("SAMPLE_RATE".to_string(), Vec::new().into())].into()),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["SAMPLE_RATE"],
        ),
        (
            "wire/bad-expected-digest",
            Box::new(|r| {
                r.bytecode = Some(v1::apply_request::Bytecode::Path(
                    common::object("tracepoint_openat.o").display().to_string(),
                ));
                r.expected_digest = "sha256:nothex".into();
            }),
            tonic::Code::InvalidArgument,
            "InvalidSpec",
            &["sha256:nothex"],
        ),
    ];
    let mut problems = Vec::new();
    let before = snapshot(&["count_openat".to_string()], None);
    for (id, edit, code, reason, words) in cases {
        let mut req = base();
        edit(&mut req);
        match client.apply(req).await {
            Ok(_) => problems.push(format!("{id}: accepted")),
            Err(s) => {
                println!("{id:<40} {:<18} {}", reason_of(&s), s.message());
                if s.code() != code || reason_of(&s) != reason {
                    problems.push(format!(
                        "{id}: {:?}/{}, expected {code:?}/{reason}: {}",
                        s.code(),
                        reason_of(&s),
                        s.message()
                    ));
                }
                for w in words {
                    if !s.message().contains(w) {
                        problems.push(format!("{id}: message {:?} lacks {w:?}", s.message()));
                    }
                }
            }
        }
        let pins = pins_under(&dirs.root);
        if !pins.is_empty() {
            problems.push(format!("{id}: left in bpffs: {pins:?}"));
        }
    }
    let after = settled(&before, &["count_openat".to_string()], None);
    if after != before {
        problems.push(format!("kernel changed:\nbefore {before:?}\nafter  {after:?}"));
    }
    // The agent is alive and serving after all of it.
    client.list(v1::ListRequest::default()).await.expect("agent alive");
    assert!(agent.child.try_wait().unwrap().is_none(), "agent exited:\n{}", agent.log());
    assert!(!agent.log().contains("panicked"), "agent panicked:\n{}", agent.log());
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}
