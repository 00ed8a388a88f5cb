//! The baselines the agent is compared with, each loading and attaching the same object
//! to the same hooks: libbpf in this process, the bpftool/tc command line, and aya 0.14
//! used plainly. Each leaves the ids of its programs in `run_ids` and cleans up after
//! itself, untimed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aya::EbpfLoader;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use aya::programs::{ProgramInfo, SchedClassifier, TcAttachType, TracePoint, UProbe, Xdp, XdpMode};

use crate::libbpf::LibbpfHook;
use crate::{Bench, Case, Hook, kernel, sh};

impl Bench {
    /// libbpf in this process: open from memory, load, attach; nothing pinned. `lo` is
    /// interface 1 in the bench's fresh network namespace.
    pub(crate) fn libbpf_once(&mut self, case: &Case) -> anyhow::Result<Duration> {
        let Some(lib) = &self.libbpf else { bail!("libbpf unavailable") };
        let hooks: Vec<(&str, LibbpfHook)> = case
            .programs
            .iter()
            .map(|(name, hook)| {
                let h = match hook {
                    Hook::Xdp => LibbpfHook::Xdp { ifindex: 1 },
                    Hook::Tc => LibbpfHook::Tcx { ifindex: 1 },
                    Hook::Tracepoint(..) => LibbpfHook::FromSection,
                    Hook::Uprobe | Hook::Uretprobe => LibbpfHook::Uprobe {
                        target: &self.args.uprobe_target,
                        symbol: &self.args.uprobe_symbol,
                        retprobe: matches!(hook, Hook::Uretprobe),
                    },
                };
                (*name, h)
            })
            .collect();
        let rate = case.sample_rate.map(u32::to_le_bytes);
        let patch = rate.as_ref().map(|r| (self.sample_rate_offset, &r[..]));
        let start = Instant::now();
        let loaded = lib.run(&self.objects[case.name], patch, &hooks)?;
        let elapsed = start.elapsed();
        self.run_ids.extend(loaded.program_fds.iter().filter_map(|fd| kernel::program_id(*fd)));
        drop(loaded);
        Ok(elapsed)
    }

    /// The command line, timed as whole processes: `bpftool prog load` + `bpftool net
    /// attach xdpgeneric` (XDP), `bpftool prog load` + `tc filter add … bpf da pinned`
    /// (TC). bpftool 7.1 cannot attach tracepoints or uprobes: those are load only.
    pub(crate) fn cli_once(&mut self, case: &Case, i: usize) -> anyhow::Result<Duration> {
        let obj = self.examples.join(format!("{}.o", case.name));
        let pin = self.dirs.bpffs.join("cli").join(format!("{}-{i}", case.name));
        let (o, p) = (obj.to_str().context("object path")?, pin.to_str().context("pin path")?);
        let hook = case.programs[0].1;
        let start = Instant::now();
        match hook {
            Hook::Xdp => {
                sh("bpftool", &["prog", "load", o, p, "type", "xdp"])?;
                sh("bpftool", &["net", "attach", "xdpgeneric", "pinned", p, "dev", "lo"])?;
            }
            Hook::Tc => {
                sh("bpftool", &["prog", "load", o, p, "type", "classifier"])?;
                sh(
                    "tc",
                    &["filter", "add", "dev", "lo", "ingress", "pref", "100", "bpf", "direct-action", "pinned", p],
                )?;
            }
            Hook::Tracepoint(..) => sh("bpftool", &["prog", "load", o, p])?,
            Hook::Uprobe | Hook::Uretprobe => sh("bpftool", &["prog", "loadall", o, p])?,
        }
        let elapsed = start.elapsed();
        let pins: Vec<PathBuf> = if pin.is_dir() {
            std::fs::read_dir(&pin)?.flatten().map(|e| e.path()).collect()
        } else {
            vec![pin.clone()]
        };
        for p in &pins {
            self.run_ids.insert(ProgramInfo::from_pin(p)?.id());
        }
        match hook {
            Hook::Xdp => sh("bpftool", &["net", "detach", "xdpgeneric", "dev", "lo"])?,
            Hook::Tc => sh("tc", &["filter", "del", "dev", "lo", "ingress", "pref", "100"])?,
            _ => {}
        }
        if pin.is_dir() {
            std::fs::remove_dir_all(&pin)?
        } else {
            std::fs::remove_file(&pin)?
        }
        Ok(elapsed)
    }

    /// aya 0.14 used plainly: `EbpfLoader::new()` (which parses the kernel's BTF), load,
    /// attach; nothing pinned. Dropping the `Ebpf` detaches and unloads.
    pub(crate) fn aya_once(&mut self, case: &Case) -> anyhow::Result<Duration> {
        let bytes = &self.objects[case.name];
        let rate = case.sample_rate.map(u32::to_le_bytes);
        let start = Instant::now();
        let mut loader = EbpfLoader::new();
        if let Some(r) = &rate {
            loader.override_global("SAMPLE_RATE", &r[..], true);
        }
        let mut ebpf = loader.load(bytes)?;
        for (name, hook) in case.programs {
            let prog = ebpf.program_mut(name).with_context(|| format!("no program {name}"))?;
            match hook {
                Hook::Xdp => {
                    let p: &mut Xdp = prog.try_into()?;
                    p.load()?;
                    p.attach("lo", XdpMode::Skb)?;
                }
                Hook::Tc => {
                    let p: &mut SchedClassifier = prog.try_into()?;
                    p.load()?;
                    p.attach("lo", TcAttachType::Ingress)?;
                }
                Hook::Tracepoint(category, tp) => {
                    let p: &mut TracePoint = prog.try_into()?;
                    p.load()?;
                    p.attach(category, tp)?;
                }
                Hook::Uprobe | Hook::Uretprobe => {
                    let p: &mut UProbe = prog.try_into()?;
                    p.load()?;
                    let at = UProbeAttachLocation::Symbol(&self.args.uprobe_symbol);
                    p.attach(at, &self.args.uprobe_target, UProbeScope::AllProcesses)?;
                }
            }
        }
        let elapsed = start.elapsed();
        for (name, _) in case.programs {
            if let Some(p) = ebpf.program(name) {
                self.run_ids.insert(p.info()?.id());
            }
        }
        drop(ebpf);
        Ok(elapsed)
    }
}
