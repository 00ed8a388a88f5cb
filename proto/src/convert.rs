//! Wire <-> API conversions. The agent validates what it converts with
//! `crds::validate`, exactly as it validates a manifest in standalone mode.

use crds::node::{AttachedProgram, Health, NodeProgramStatus, PinnedMap};
use crds::program::{
    CgroupSkbAttach, ContainerSelector, Direction, KernelFunctionAttach, KprobeAttach, LsmAttach, PodInterfaces,
    PodSelector, ProgramSpec, ProgramType, RawTracepointAttach, TcAttach, TracepointAttach, UprobeAttach, XdpAttach,
    XdpMode,
};

use crds::rollout::{MapPolicy, MapUpgrade};

use crate::v1::{self, program::Attach};

/// A wire message that cannot be an API value (an unknown enum string, a missing block).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// The interfaces an XDP or TC block attaches to: the node's, or those inside each pod.
fn on_interfaces(node: &[String], pods: Option<&PodInterfaces>) -> Vec<String> {
    pods.map_or_else(|| node.to_vec(), |p| p.interfaces.clone())
}

/// An XDP or TC block's interfaces as received: the node's, or (`in_pods`) those inside
/// each pod of `ApplyRequest.pods` that names the program. The wire carries no namespace
/// and no selector: the operator resolved the pods already and sends them by uid, so the
/// namespace stays empty (which `crds::validate::validate_programs`, the agent's check of
/// what the wire gives, accepts; a spec's validation still requires one).
fn split_interfaces(interfaces: Vec<String>, in_pods: bool) -> (Vec<String>, Option<PodInterfaces>) {
    if in_pods {
        (Vec::new(), Some(PodInterfaces { namespace: String::new(), selector: PodSelector::default(), interfaces }))
    } else {
        (interfaces, None)
    }
}

fn xdp_mode(s: &str) -> Result<XdpMode, WireError> {
    match s {
        "" | "Auto" => Ok(XdpMode::Auto),
        "Native" => Ok(XdpMode::Native),
        "Generic" => Ok(XdpMode::Generic),
        other => Err(WireError(format!("unknown XDP mode {other:?}: use Auto, Native or Generic"))),
    }
}

fn xdp_mode_str(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Auto => "Auto",
        XdpMode::Native => "Native",
        XdpMode::Generic => "Generic",
    }
}

fn direction(s: &str) -> Result<Direction, WireError> {
    match s {
        "Ingress" => Ok(Direction::Ingress),
        "Egress" => Ok(Direction::Egress),
        other => Err(WireError(format!("unknown direction {other:?}: use Ingress or Egress"))),
    }
}

fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    }
}

fn uprobe_to_wire(u: &UprobeAttach) -> v1::Uprobe {
    v1::Uprobe {
        target: u.target.clone(),
        symbol: u.symbol.clone(),
        offset: u.offset,
        pid: u.pid,
        in_pods: u.containers.is_some(),
        container_names: u.containers.as_ref().map(|c| c.container_names.clone()).unwrap_or_default(),
    }
}

/// As `split_interfaces`: inside containers, the wire carries the container names only.
fn uprobe_from_wire(u: v1::Uprobe) -> UprobeAttach {
    let containers = u.in_pods.then(|| ContainerSelector {
        namespace: String::new(),
        selector: PodSelector::default(),
        container_names: u.container_names,
    });
    UprobeAttach { target: u.target, symbol: u.symbol, offset: u.offset, pid: u.pid, containers }
}

/// A program of a BpfProgram spec as sent in `ApplyRequest.programs`.
pub fn program_to_wire(p: &ProgramSpec) -> v1::Program {
    let attach = match p.program_type {
        ProgramType::Xdp => p.xdp.as_ref().map(|x| {
            Attach::Xdp(v1::Xdp {
                interfaces: on_interfaces(&x.interfaces, x.pods.as_ref()),
                mode: xdp_mode_str(x.mode).into(),
                in_pods: x.pods.is_some(),
            })
        }),
        ProgramType::Tc => p.tc.as_ref().map(|x| {
            Attach::Tc(v1::Tc {
                interfaces: on_interfaces(&x.interfaces, x.pods.as_ref()),
                direction: direction_str(x.direction).into(),
                priority: x.priority,
                in_pods: x.pods.is_some(),
            })
        }),
        ProgramType::Tracepoint => {
            p.tracepoint.as_ref().map(|x| Attach::Tracepoint(v1::Names { names: x.names.clone() }))
        }
        ProgramType::RawTracepoint => {
            p.raw_tracepoint.as_ref().map(|x| Attach::RawTracepoint(v1::Names { names: x.names.clone() }))
        }
        ProgramType::Fentry => {
            p.fentry.as_ref().map(|x| Attach::Fentry(v1::KernelFunction { function: x.function.clone() }))
        }
        ProgramType::Fexit => {
            p.fexit.as_ref().map(|x| Attach::Fexit(v1::KernelFunction { function: x.function.clone() }))
        }
        ProgramType::Kprobe => {
            p.kprobe.as_ref().map(|x| Attach::Kprobe(v1::Kprobe { function: x.function.clone(), offset: x.offset }))
        }
        ProgramType::Kretprobe => p
            .kretprobe
            .as_ref()
            .map(|x| Attach::Kretprobe(v1::Kprobe { function: x.function.clone(), offset: x.offset })),
        ProgramType::Uprobe => p.uprobe.as_ref().map(|x| Attach::Uprobe(uprobe_to_wire(x))),
        ProgramType::Uretprobe => p.uretprobe.as_ref().map(|x| Attach::Uretprobe(uprobe_to_wire(x))),
        ProgramType::CgroupSkb => p.cgroup_skb.as_ref().map(|x| {
            Attach::CgroupSkb(v1::CgroupSkb {
                cgroup_path: x.cgroup_path.clone(),
                direction: direction_str(x.direction).into(),
            })
        }),
        ProgramType::Lsm => p.lsm.as_ref().map(|x| Attach::Lsm(v1::Lsm { hook: x.hook.clone() })),
    };
    v1::Program { name: p.name.clone(), r#type: p.program_type.as_str().into(), attach }
}

/// A received program as an API value, ready for `crds::validate::validate_programs`.
pub fn program_from_wire(p: v1::Program) -> Result<ProgramSpec, WireError> {
    let program_type = ProgramType::parse(&p.r#type).ok_or_else(|| {
        WireError(format!(
            "program {:?}: unknown type {:?}; use one of {}",
            p.name,
            p.r#type,
            ProgramType::ALL.map(|t| t.as_str()).join(", ")
        ))
    })?;
    let mut spec = ProgramSpec {
        name: p.name,
        program_type,
        xdp: None,
        tc: None,
        tracepoint: None,
        raw_tracepoint: None,
        fentry: None,
        fexit: None,
        kprobe: None,
        kretprobe: None,
        uprobe: None,
        uretprobe: None,
        cgroup_skb: None,
        lsm: None,
    };
    match p.attach {
        None => {}
        Some(Attach::Xdp(x)) => {
            let (interfaces, pods) = split_interfaces(x.interfaces, x.in_pods);
            spec.xdp = Some(XdpAttach { interfaces, mode: xdp_mode(&x.mode)?, pods })
        }
        Some(Attach::Tc(x)) => {
            let (interfaces, pods) = split_interfaces(x.interfaces, x.in_pods);
            spec.tc = Some(TcAttach { interfaces, direction: direction(&x.direction)?, priority: x.priority, pods })
        }
        Some(Attach::Tracepoint(x)) => spec.tracepoint = Some(TracepointAttach { names: x.names }),
        Some(Attach::RawTracepoint(x)) => spec.raw_tracepoint = Some(RawTracepointAttach { names: x.names }),
        Some(Attach::Fentry(x)) => spec.fentry = Some(KernelFunctionAttach { function: x.function }),
        Some(Attach::Fexit(x)) => spec.fexit = Some(KernelFunctionAttach { function: x.function }),
        Some(Attach::Kprobe(x)) => spec.kprobe = Some(KprobeAttach { function: x.function, offset: x.offset }),
        Some(Attach::Kretprobe(x)) => spec.kretprobe = Some(KprobeAttach { function: x.function, offset: x.offset }),
        Some(Attach::Uprobe(x)) => spec.uprobe = Some(uprobe_from_wire(x)),
        Some(Attach::Uretprobe(x)) => spec.uretprobe = Some(uprobe_from_wire(x)),
        Some(Attach::CgroupSkb(x)) => {
            spec.cgroup_skb = Some(CgroupSkbAttach { cgroup_path: x.cgroup_path, direction: direction(&x.direction)? })
        }
        Some(Attach::Lsm(x)) => spec.lsm = Some(LsmAttach { hook: x.hook }),
    }
    Ok(spec)
}

pub fn health_to_wire(h: Health) -> v1::Health {
    match h {
        Health::Healthy => v1::Health::Healthy,
        Health::Degraded => v1::Health::Degraded,
        Health::Failed => v1::Health::Failed,
    }
}

pub fn health_from_wire(h: i32) -> Health {
    match v1::Health::try_from(h) {
        Ok(v1::Health::Healthy) => Health::Healthy,
        Ok(v1::Health::Degraded) => Health::Degraded,
        _ => Health::Failed,
    }
}

/// An agent's report of one owner, as the BpfNode status entry the operator writes.
pub fn state_to_status(s: &v1::OwnerState) -> NodeProgramStatus {
    let owner = s.owner.clone().unwrap_or_default();
    NodeProgramStatus {
        owner: owner.name,
        owner_uid: owner.uid,
        revision: s.revision.clone(),
        health: health_from_wire(s.health),
        attached: s
            .attached
            .iter()
            .filter_map(|a| {
                Some(AttachedProgram {
                    name: a.name.clone(),
                    program_type: ProgramType::parse(&a.r#type)?,
                    program_id: a.program_id,
                    link_ids: a.link_ids.clone(),
                })
            })
            .collect(),
        maps: s.maps.iter().map(|m| PinnedMap { name: m.name.clone(), pin_path: m.pin_path.clone() }).collect(),
        last_error: (!s.last_error.is_empty()).then(|| s.last_error.clone()),
        bytecode_digest: (!s.bytecode_digest.is_empty()).then(|| s.bytecode_digest.clone()),
        maps_recreated: s.maps_recreated.clone(),
        // The agent bounds its notes (one per metric); a hostile one is cut here too.
        metrics_limited: s.metrics_limited.iter().take(crds::metrics::MAX_METRICS).cloned().collect(),
        pods: s
            .pods
            .iter()
            .map(|p| crds::node::PodAttachment {
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                link_ids: p.link_ids.clone(),
                reason: (!p.reason.is_empty()).then(|| p.reason.clone()),
                message: (!p.message.is_empty()).then(|| p.message.clone()),
            })
            .collect(),
        // Counted where the list is cut (`NodeProgramStatus::bounded`, for a BpfNode).
        pods_total: 0,
        pods_failed: 0,
    }
}

/// The wire form of a node's per-program truth (the inverse of `state_to_status`).
pub fn status_to_wire(s: &NodeProgramStatus) -> v1::OwnerState {
    v1::OwnerState {
        owner: Some(v1::Owner { uid: s.owner_uid.clone(), name: s.owner.clone() }),
        revision: s.revision.clone(),
        health: health_to_wire(s.health) as i32,
        attached: s
            .attached
            .iter()
            .map(|a| v1::AttachedProgram {
                name: a.name.clone(),
                r#type: a.program_type.as_str().into(),
                program_id: a.program_id,
                link_ids: a.link_ids.clone(),
            })
            .collect(),
        maps: s.maps.iter().map(|m| v1::PinnedMap { name: m.name.clone(), pin_path: m.pin_path.clone() }).collect(),
        last_error: s.last_error.clone().unwrap_or_default(),
        bytecode_digest: s.bytecode_digest.clone().unwrap_or_default(),
        pods: s
            .pods
            .iter()
            .map(|p| v1::PodState {
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                link_ids: p.link_ids.clone(),
                reason: p.reason.clone().unwrap_or_default(),
                message: p.message.clone().unwrap_or_default(),
            })
            .collect(),
        maps_recreated: s.maps_recreated.clone(),
        metrics_limited: s.metrics_limited.clone(),
    }
}

/// A BpfProgram's `spec.maps[]` entry as sent in `ApplyRequest.maps`.
pub fn map_policy_to_wire(p: &MapPolicy) -> v1::MapPolicy {
    let on_upgrade = match p.on_upgrade {
        MapUpgrade::Keep => "Keep",
        MapUpgrade::Recreate => "Recreate",
    };
    let (from_program, from_map) = p.from.as_ref().map(|f| (f.program.clone(), f.map.clone())).unwrap_or_default();
    v1::MapPolicy {
        name: p.name.clone(),
        on_upgrade: on_upgrade.into(),
        from_program,
        from_map,
        from_owner_uid: String::new(),
    }
}

/// A received map policy as an API value.
pub fn map_policy_from_wire(p: v1::MapPolicy) -> Result<MapPolicy, WireError> {
    let on_upgrade = match p.on_upgrade.as_str() {
        "" | "Keep" => MapUpgrade::Keep,
        "Recreate" => MapUpgrade::Recreate,
        other => {
            return Err(WireError(format!("map {:?}: unknown onUpgrade {other:?}; use Keep or Recreate", p.name)));
        }
    };
    let from = (!p.from_program.is_empty() || !p.from_map.is_empty())
        .then_some(crds::rollout::MapSource { program: p.from_program, map: p.from_map });
    Ok(MapPolicy { name: p.name, on_upgrade, from })
}

/// A BpfProgram's `spec.metrics[]` entry as sent in `ApplyRequest.metrics`.
pub fn metric_to_wire(m: &crds::metrics::MetricSpec) -> v1::Metric {
    use crds::metrics::{MetricType, PerCpu};
    v1::Metric {
        name: m.name.clone(),
        help: m.help.clone(),
        r#type: match m.metric_type {
            MetricType::Counter => "Counter",
            MetricType::Gauge => "Gauge",
        }
        .into(),
        map: m.map.clone(),
        labels: m.labels.iter().map(|l| v1::MetricLabel { name: l.name.clone(), field: l.field.clone() }).collect(),
        value: m.value.clone(),
        per_cpu: match m.per_cpu {
            PerCpu::Sum => "Sum",
            PerCpu::Label => "Label",
        }
        .into(),
    }
}

/// A received metric as an API value (checked by the caller with `crds::metrics::problems`).
pub fn metric_from_wire(m: v1::Metric) -> Result<crds::metrics::MetricSpec, WireError> {
    use crds::metrics::{MetricLabel, MetricSpec, MetricType, PerCpu};
    let metric_type = match m.r#type.as_str() {
        "Counter" => MetricType::Counter,
        "Gauge" => MetricType::Gauge,
        other => return Err(WireError(format!("metric {:?}: unknown type {other:?}; use Counter or Gauge", m.name))),
    };
    let per_cpu = match m.per_cpu.as_str() {
        "" | "Sum" => PerCpu::Sum,
        "Label" => PerCpu::Label,
        other => return Err(WireError(format!("metric {:?}: unknown perCpu {other:?}; use Sum or Label", m.name))),
    };
    Ok(MetricSpec {
        name: m.name,
        help: m.help,
        metric_type,
        map: m.map,
        labels: m.labels.into_iter().map(|l| MetricLabel { name: l.name, field: l.field }).collect(),
        value: m.value,
        per_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_type_round_trips() {
        let yaml = r#"
- {name: a, type: XDP, xdp: {interfaces: [eth0, eth1], mode: Native}}
- {name: b, type: TC, tc: {interfaces: [eth0], direction: Egress, priority: 7}}
- {name: c, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}
- {name: d, type: RawTracepoint, rawTracepoint: {names: [sys_enter]}}
- {name: e, type: Fentry, fentry: {function: do_unlinkat}}
- {name: f, type: Fexit, fexit: {function: do_unlinkat}}
- {name: g, type: Kprobe, kprobe: {function: tcp_connect, offset: 4}}
- {name: h, type: Kretprobe, kretprobe: {function: tcp_connect}}
- {name: i, type: Uprobe, uprobe: {target: /usr/bin/bash, symbol: readline, pid: 5}}
- {name: j, type: Uretprobe, uretprobe: {target: /usr/bin/bash, offset: 64}}
- {name: k, type: CgroupSkb, cgroupSkb: {cgroupPath: /sys/fs/cgroup/unified/x, direction: Ingress}}
- {name: l, type: Lsm, lsm: {hook: file_open}}
"#;
        let programs: Vec<ProgramSpec> = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(programs.len(), ProgramType::ALL.len());
        for p in programs {
            let back = program_from_wire(program_to_wire(&p)).unwrap();
            assert_eq!(back, p);
        }
    }

    #[test]
    fn unknown_values_are_named() {
        let p = v1::Program { name: "x".into(), r#type: "Xdp".into(), attach: None };
        let e = program_from_wire(p).unwrap_err();
        assert!(e.0.contains("unknown type \"Xdp\"") && e.0.contains("XDP, TC"), "{e}");
        let p = v1::Program {
            name: "x".into(),
            r#type: "XDP".into(),
            attach: Some(Attach::Xdp(v1::Xdp { interfaces: vec![], mode: "Fast".into(), in_pods: false })),
        };
        assert!(program_from_wire(p).unwrap_err().0.contains("unknown XDP mode \"Fast\""));
    }

    /// Inside pods, the wire carries the interfaces and `in_pods` only: they come back as
    /// the pods' interfaces (never the node's), with no namespace, which the agent's
    /// validation of wire programs takes and a spec's validation does not.
    #[test]
    fn programs_in_pods_cross_the_wire_without_their_namespace() {
        let yaml = r#"
- {name: a, type: XDP, xdp: {mode: Generic, pods: {namespace: shop, selector: {matchLabels: {app: web}}, interfaces: [eth0, eth1]}}}
- {name: b, type: TC, tc: {direction: Egress, priority: 7, pods: {namespace: shop}}}
- {name: c, type: Uretprobe, uretprobe: {target: /bin/app, symbol: serve, containers: {namespace: shop, containerNames: [app]}}}
"#;
        let programs: Vec<ProgramSpec> = serde_yaml::from_str(yaml).unwrap();
        let wire: Vec<v1::Program> = programs.iter().map(program_to_wire).collect();
        assert!(
            matches!(&wire[0].attach, Some(Attach::Xdp(x)) if x.in_pods && x.interfaces == ["eth0", "eth1"]),
            "{wire:?}"
        );
        assert!(matches!(&wire[1].attach, Some(Attach::Tc(x)) if x.in_pods && x.interfaces == ["eth0"]), "{wire:?}");
        let back: Vec<ProgramSpec> = wire.into_iter().map(|p| program_from_wire(p).unwrap()).collect();
        let xdp = back[0].xdp.as_ref().unwrap();
        assert!(xdp.interfaces.is_empty(), "never the node's interfaces of the same names");
        let pods = xdp.pods.as_ref().unwrap();
        assert_eq!((pods.namespace.as_str(), pods.interfaces.clone()), ("", vec!["eth0".into(), "eth1".into()]));
        assert_eq!(back[1].tc.as_ref().unwrap().pods.as_ref().unwrap().interfaces, ["eth0"]);
        let probe = back[2].uretprobe.as_ref().unwrap().containers.as_ref().unwrap();
        assert_eq!((probe.namespace.as_str(), probe.container_names.clone()), ("", vec!["app".to_string()]));

        let valid = crds::validate::validate_programs(&back).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&valid[0].attach, crds::validate::Attach::Xdp { in_pods: true, interfaces, .. } if interfaces.len() == 2)
        );
        assert!(matches!(&valid[1].attach, crds::validate::Attach::Tc { in_pods: true, priority: 7, .. }));
        assert!(
            matches!(&valid[2].attach, crds::validate::Attach::Uprobe { ret: true, containers: Some(c), .. } if c == &["app"])
        );
        // A manifest must still name the namespace its pods are selected in.
        let spec: crds::BpfProgramSpec = serde_yaml::from_str(
            "{bytecode: {path: /x.o}, programs: [{name: a, type: XDP, xdp: {pods: {namespace: \"\"}}}]}",
        )
        .unwrap();
        let e = crds::validate::validate_spec(&spec).unwrap_err().to_string();
        assert!(e.contains("programs[0].xdp.pods.namespace") && e.contains("not a namespace name"), "{e}");
        // A wire namespace that is set is still checked.
        let mut odd = back[0].clone();
        odd.xdp.as_mut().unwrap().pods.as_mut().unwrap().namespace = "Not_A_Namespace".into();
        assert!(crds::validate::validate_programs(&[odd]).is_err());
    }

    #[test]
    fn node_truth_round_trips_through_the_wire() {
        use crds::Health;
        use crds::node::{AttachedProgram, PinnedMap};
        let s = NodeProgramStatus {
            owner: "p".into(),
            owner_uid: "u-1".into(),
            revision: "0123456789abcdef".into(),
            health: Health::Degraded,
            attached: vec![AttachedProgram {
                name: "f".into(),
                program_type: ProgramType::Tc,
                program_id: 7,
                link_ids: vec![8, 9],
            }],
            maps: vec![PinnedMap { name: "m".into(), pin_path: "/sys/fs/bpf/x".into() }],
            last_error: Some("link gone".into()),
            bytecode_digest: Some("sha256:00".into()),
            maps_recreated: vec!["m: value size 8 -> 16, recreated empty".into()],
            metrics_limited: vec!["flows: more series than 1000".into()],
            pods: vec![
                crds::node::PodAttachment {
                    uid: "p-1".into(),
                    namespace: "shop".into(),
                    name: "web-1".into(),
                    link_ids: vec![11],
                    reason: None,
                    message: None,
                },
                crds::node::PodAttachment {
                    uid: "p-2".into(),
                    namespace: "shop".into(),
                    name: "web-2".into(),
                    link_ids: vec![],
                    reason: Some("TargetNotFound".into()),
                    message: Some("the pod has no sandbox".into()),
                },
            ],
            pods_total: 0,
            pods_failed: 0,
        };
        assert_eq!(state_to_status(&status_to_wire(&s)), s);
    }

    #[test]
    fn map_policies_round_trip_and_unknown_ones_are_named() {
        for on_upgrade in [MapUpgrade::Keep, MapUpgrade::Recreate] {
            let p = MapPolicy { name: "counts".into(), on_upgrade, from: None };
            assert_eq!(map_policy_from_wire(map_policy_to_wire(&p)).unwrap(), p);
        }
        let empty = v1::MapPolicy { name: "c".into(), on_upgrade: String::new(), ..Default::default() };
        assert_eq!(map_policy_from_wire(empty).unwrap().on_upgrade, MapUpgrade::Keep);
        let bad = v1::MapPolicy { name: "c".into(), on_upgrade: "Reset".into(), ..Default::default() };
        assert!(map_policy_from_wire(bad).unwrap_err().0.contains("unknown onUpgrade \"Reset\""));
    }
}
