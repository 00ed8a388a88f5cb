#!/usr/bin/env python3
"""Programs inside pods at scale, on a real cluster: N pods created at once on one node
(one Deployment scaled from 0 to N), an XDP program inside each (examples/manifests/
xdp-pods.yaml's program, its own BpfProgram), and when each is attached.

    KUBECONFIG=... scripts/bench-pods.py [--pods 100] [--image IMAGE] [--namespace NS]

Needs bpfleet installed with the namespace in podTargets (helm ... --set
'podTargets.namespaces={NS}'), the image present on the node (e.g. the examples' ticker:
scripts/images.sh --examples --load), and kubectl. The namespace must exist (create it before the helm upgrade). Polls every 100 ms: the pods
(Running) and the node's BpfNode (podsTotal - podsFailed for the program: attached, as
the operator reports what the agent says). Prints one BENCH line and a summary; removes
what it made. Figures go to docs/benchmarks.md ("Pods").
"""
import argparse
import json
import subprocess
import sys
import time

PROGRAM = "bench-pods"


def kubectl(*args, input=None, check=True):
    out = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def get_json(*args):
    return json.loads(kubectl("get", *args, "-o", "json"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--image", default="bpfleet.local/bpfleet-example-ticker:dev")
    ap.add_argument("--namespace", default="bpfleet-bench-pods")
    ap.add_argument("--operator-namespace", default="bpfleet-system")
    ap.add_argument("--release", default="bpfleet")
    ap.add_argument("--object", default="examples/bpf/build/xdp_pod_counter.o")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    ns = a.namespace

    nodes = get_json("nodes")["items"]
    ready = [n["metadata"]["name"] for n in nodes
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))]
    if len(ready) != 1:
        sys.exit(f"needs exactly one Ready node (the pods all land on it), found {ready}")
    node = ready[0]
    sa = f"system:serviceaccount:{a.operator_namespace}:{a.release}-operator"
    if kubectl("auth", "can-i", "watch", "pods", "-n", ns, "--as", sa, check=False).strip() != "yes":
        sys.exit(f"the operator may not watch pods in {ns}: helm upgrade ... --set 'podTargets.namespaces={{{ns}}}'")

    kubectl("create", "namespace", ns, check=False)
    kubectl("-n", a.operator_namespace, "create", "configmap", "bench-pods-bytecode",
            f"--from-file=xdp_pod_counter.o={a.object}", check=False)
    manifest = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: bench, namespace: {ns}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: bench}}}}
  template:
    metadata: {{labels: {{app: bench}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: bench, image: "{a.image}", imagePullPolicy: IfNotPresent}}]
---
apiVersion: bpfleet.dev/v1alpha1
kind: BpfProgram
metadata: {{name: {PROGRAM}}}
spec:
  nodeSelector: {{}}
  bytecode:
    configMap: {{name: bench-pods-bytecode, namespace: {a.operator_namespace}, key: xdp_pod_counter.o}}
  programs:
    - name: count_by_pod
      type: XDP
      xdp: {{mode: Generic, pods: {{namespace: {ns}, selector: {{matchLabels: {{app: bench}}}}}}}}
"""
    kubectl("apply", "-f", "-", input=manifest)
    try:
        run(a, ns, node)
        # The same 100 pods, all running, selected at once: the program deleted, then
        # created again.
        program = manifest.split("---", 1)[1]
        kubectl("delete", "bpfprogram", PROGRAM, "--wait=true", "--timeout=120s")
        start = time.monotonic()
        kubectl("apply", "-f", "-", input=program)
        while attached(node)[0] < a.pods:
            if time.monotonic() - start > a.timeout:
                sys.exit(f"re-selected: {attached(node)} attached after {a.timeout} s")
            time.sleep(0.1)
        took = time.monotonic() - start
        print(f"BENCH pods={a.pods} running_pods_selected_at_once_attached_s={took:.1f}")
        print(f"{a.pods} running pods selected at once (the program created): all attached after {took:.1f} s")
    finally:
        kubectl("delete", "bpfprogram", PROGRAM, "--wait=true", "--timeout=120s", check=False)
        # The namespace stays (the chart's Role for it lives there): only what this made goes.
        kubectl("-n", ns, "delete", "deployment", "bench", "--wait=true", "--timeout=300s", check=False)
        kubectl("-n", a.operator_namespace, "delete", "configmap", "bench-pods-bytecode", check=False)


def attached(node):
    b = get_json("bpfnode", node)
    for p in b.get("status", {}).get("programs", []):
        if p.get("owner") == PROGRAM:
            return p.get("podsTotal", 0) - p.get("podsFailed", 0), p.get("podsTotal", 0)
    return 0, 0


def run(a, ns, node):
    # Pods of an earlier run still going would count as running and slow the kubelet.
    while get_json("pods", "-n", ns, "-l", "app=bench")["items"]:
        time.sleep(1)
    start = time.monotonic()
    kubectl("-n", ns, "scale", "deployment/bench", f"--replicas={a.pods}")
    running_at = {}
    all_running = all_attached = None
    while time.monotonic() - start < a.timeout:
        now = time.monotonic() - start
        pods = get_json("pods", "-n", ns, "-l", "app=bench")["items"]
        for p in pods:
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp"):
                running_at.setdefault(p["metadata"]["uid"], now)
        if all_running is None and len(running_at) >= a.pods:
            all_running = now
        ok, total = attached(node)
        if all_attached is None and ok >= a.pods:
            all_attached = now
        if all_running is not None and all_attached is not None:
            break
        time.sleep(0.1)
    if all_running is None or all_attached is None:
        sys.exit(f"after {a.timeout} s: {len(running_at)} Running, {attached(node)} attached (of {a.pods})")
    lag = max(0.0, all_attached - all_running)
    print(f"BENCH pods={a.pods} all_running_s={all_running:.1f} all_attached_s={all_attached:.1f} "
          f"attached_after_last_running_s={lag:.1f}")
    print(f"{a.pods} pods created at once on {node}: all Running after {all_running:.1f} s (kubelet, runtime, CNI), "
          f"all attached after {all_attached:.1f} s: {lag:.1f} s after the last one ran (polled every 100 ms)")


if __name__ == "__main__":
    main()
