//! Step 2f of the cluster scenario: map volumes. The shipped example
//! (`examples/manifests/map-volume.yaml`), moved to the test's namespace: a pod without
//! any privilege reads xdp-counter's packet count through csi.bpfleet.dev (the kubelet
//! registered the driver, the agent DaemonSet's `csi` container mounted the volume), the
//! count it prints is the kernel's (bpftool on the owner's pin), and the pod's deletion
//! leaves no mount: bpffs mounts of pod volumes counted on the node before and after. A pod
//! of a namespace the chart does not allow never starts, the kubelet's event saying why.

use std::time::{Duration, Instant};

use e2e::installed::Installed;
use e2e::util::wait_for;

use super::{PODS_NS, example};

/// bpffs mounts inside the kubelet's pods' CSI volumes, as the node's mount table shows them.
fn volume_mounts() -> usize {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .filter(|l| l.contains(" /var/lib/kubelet/pods/") && l.contains("kubernetes.io~csi") && l.contains(" - bpf "))
        .count()
}

pub fn map_volume_in_a_pod(c: &Installed, version: &str, kernel_count: impl Fn() -> u64) {
    let t = Instant::now();
    // The kubelet registers the driver once the agent's `csi` container is up: within
    // seconds, unless a registration socket of an earlier agent was left behind (then the
    // kubelet's backoff on the dead one holds the new one up for up to two minutes).
    wait_for(Duration::from_secs(60), "the kubelet lists csi.bpfleet.dev on the node (CSINode)", || {
        let drivers = c
            .kubectl(&["get", "csinode", "-o", "jsonpath={.items[*].spec.drivers[*].name}"])
            .map_err(|e| format!("{e:#}"))?;
        drivers.split_whitespace().any(|d| d == "csi.bpfleet.dev").then_some(()).ok_or(drivers)
    });
    eprintln!("step 2f: csi.bpfleet.dev registered with the kubelet ({:.1}s into the step)", t.elapsed().as_secs_f64());
    let before = volume_mounts();
    let yaml = example("map-volume", version);
    c.apply(&yaml).unwrap();
    let printed = wait_for(Duration::from_secs(90), "the map reader prints the count", || {
        let logs = c.kubectl(&["-n", PODS_NS, "logs", "map-reader"]).map_err(|e| format!("{e:#}"))?;
        logs.lines().last().and_then(|l| l.trim().parse::<u64>().ok()).ok_or(logs)
    });
    let took = t.elapsed();
    let kernel = kernel_count();
    assert!(printed > 0 && printed <= kernel, "the pod printed {printed}; the kernel holds {kernel}");
    assert_eq!(volume_mounts(), before + 1, "one bpffs, the pod's volume");
    // Only the map named, read-only: the pod cannot write it.
    let listing = c.kubectl(&[
        "-n",
        PODS_NS,
        "exec",
        "map-reader",
        "--",
        "/usr/local/bin/mapcat",
        "/maps/packet_count",
        "write",
        "1",
    ]);
    assert!(listing.is_err(), "a read-only volume refuses writes: {listing:?}");

    // A namespace the chart does not allow: the kubelet cannot mount, and says why.
    let denied = yaml
        .replace(&format!("namespace: {PODS_NS}"), "namespace: default")
        .replace("name: map-reader", "name: map-reader-denied");
    c.apply(&denied).unwrap();
    let why = wait_for(Duration::from_secs(60), "the kubelet's FailedMount event", || {
        let ev = c
            .kubectl(&[
                "-n",
                "default",
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=map-reader-denied",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .map_err(|e| format!("{e:#}"))?;
        if ev.contains("may not mount") { Ok(ev) } else { Err(ev) }
    });
    assert!(why.contains("pods of namespace \"default\" may not mount BpfProgram maps"), "{why}");
    c.kubectl(&["-n", "default", "delete", "pod", "map-reader-denied", "--grace-period=0", "--force"]).ok();

    c.kubectl(&["-n", PODS_NS, "delete", "pod", "map-reader", "--grace-period=1", "--wait=true"]).unwrap();
    wait_for(Duration::from_secs(60), "no volume mount left", || {
        let now = volume_mounts();
        if now == before { Ok(()) } else { Err(format!("{now} bpffs volume mounts, {before} before")) }
    });
    eprintln!(
        "step 2f: an unprivileged pod read {printed} packets (kernel {kernel}) through csi.bpfleet.dev {took:.1?} after its creation; \
         bpffs volume mounts on the node {before} -> {} -> {before} after its deletion",
        before + 1
    );
}
