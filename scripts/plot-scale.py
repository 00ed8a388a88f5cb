#!/usr/bin/env python3
"""Plot the operator scale benchmark (docs/scale.jsonl) as a PNG (docs/scale.png).

Usage: scripts/plot-scale.py [INPUT.jsonl] [OUTPUT.png]

INPUT is JSON lines, one benchmark point per line, with at least "nodes" and
"programs" and some of: peak_rss_kib, cold_ready_s, change_all_at_once_s,
change_progressive_s, resync_pass_ms. Other fields are ignored; a missing or
null metric only drops that point from that metric's series. An optional
"machine" string is shown under the title.

Left panel: peak RSS against nodes x programs. Right panel: convergence
times against nodes x programs. Both have one colour per program count.

Needs matplotlib (Debian: apt-get install -y python3-matplotlib).
"""

import argparse
import json
import os
import sys

# Defaults are relative to the repository root (this script lives in scripts/),
# so the script works from any directory. Paths given as arguments are taken
# as the user typed them, relative to the current directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_INPUT = os.path.join(REPO_ROOT, "docs", "scale.jsonl")
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "docs", "scale.png")

TITLE = "bpfleet operator at scale (fake agents over mTLS, mocked API server)"

# Right panel: (field in the JSON line, legend label, marker, factor to seconds).
TIME_METRICS = [
    ("cold_ready_s", "cold start \u2192 all Ready", "o", 1.0),
    ("change_all_at_once_s", "one spec change, AllAtOnce", "s", 1.0),
    ("change_progressive_s", "one spec change, Progressive", "^", 1.0),
    ("resync_pass_ms", "resync pass", "D", 0.001),
]

# Targets drawn as dashed horizontal lines: (value, label).
RSS_TARGETS_MIB = [
    (256, "target: 5,000 \u00d7 100 \u2264 256 MiB"),
    (48, "target: 50 \u00d7 1,000 \u2264 48 MiB"),
]
TIME_TARGET_S = (10, "target: AllAtOnce to 5,000 nodes < 10 s")


def number(value):
    """Return value as a float if it is a real positive number, else None.

    Log axes cannot show zero or negative values, and JSON booleans are
    ints in Python, so both are rejected here.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value <= 0:
        return None
    return float(value)


def read_points(path):
    """Read the JSON-lines file; return (points, machines).

    Each point is the parsed dict, kept only if it has positive "nodes" and
    "programs". Unparsable lines (e.g. a half-written last line) are reported
    on stderr and skipped.
    """
    points = []
    machines = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                point = json.loads(line)
            except json.JSONDecodeError as e:
                print(f"{path}:{lineno}: skipped, not JSON: {e}", file=sys.stderr)
                continue
            if not isinstance(point, dict):
                print(f"{path}:{lineno}: skipped, not a JSON object", file=sys.stderr)
                continue
            if number(point.get("nodes")) is None or number(point.get("programs")) is None:
                print(f"{path}:{lineno}: skipped, no nodes/programs", file=sys.stderr)
                continue
            points.append(point)
            machine = point.get("machine")
            if isinstance(machine, str) and machine and machine not in machines:
                machines.append(machine)
    return points, machines


def series(points, field, factor=1.0):
    """(x, y, nodes) lists for one metric, sorted by x = nodes * programs.

    Points where the field is missing, null or not a positive number are left out.
    """
    rows = []
    for p in points:
        y = number(p.get(field))
        if y is None:
            continue
        nodes = int(p["nodes"])
        rows.append((nodes * int(p["programs"]), y * factor, nodes))
    rows.sort()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def thousands(value, _pos=None):
    """Tick label with thousands separators: 50000 -> "50,000", 0.5 -> "0.5"."""
    if value >= 1:
        return f"{value:,.0f}"
    return f"{value:g}"


# Half-transparent white box behind text so that it stays readable over lines.
TEXT_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.75}


def label_target(ax, y, text, side):
    """Draw a dashed horizontal target line with its label just above it.

    side is "left" or "right": which end of the line carries the label.
    """
    ax.axhline(y, color="0.35", linestyle="--", linewidth=1.2, zorder=1)
    x = 0.01 if side == "left" else 0.99
    # x in axes coordinates (0..1), y in data coordinates.
    # zorder 2: above the grid and the dashed line, below the data (zorder 3).
    ax.text(x, y, text, transform=ax.get_yaxis_transform(), va="bottom", ha=side,
            fontsize=11, color="0.25", bbox=TEXT_BOX, zorder=2)


def plot(points, machines, output, plt, ticker, Line2D):
    program_counts = sorted({int(p["programs"]) for p in points})
    # One colour per program count, the same in both panels.
    colours = {n: f"C{i % 10}" for i, n in enumerate(program_counts)}

    plt.rcParams.update({"font.size": 12})
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 7), dpi=100)

    # ---- Left: peak RSS ----
    for i, n in enumerate(program_counts):
        group = [p for p in points if int(p["programs"]) == n]
        xs, ys, nodes = series(group, "peak_rss_kib", 1 / 1024)
        if not xs:
            continue
        left.plot(xs, ys, marker="o", markersize=7, linewidth=2,
                  color=colours[n], label=f"{n:,} programs", zorder=3)
        # Alternate labels above/below per series so that two series meeting
        # at the same x do not print on top of each other.
        dy = 8 if i % 2 == 0 else -16
        for x, y, k in zip(xs, ys, nodes):
            left.annotate(f"{k:,} nodes", (x, y), textcoords="offset points",
                          xytext=(6, dy), fontsize=10, color=colours[n],
                          bbox=TEXT_BOX, zorder=4)
    # Labels on the right: RSS grows with x, so the lower right is usually empty.
    for value, text in RSS_TARGETS_MIB:
        label_target(left, value, text, "right")
    left.set_xscale("log")
    # Log too: the targets (48 and 256 MiB) and the largest runs are an order apart.
    left.set_yscale("log")
    left.yaxis.set_major_locator(ticker.FixedLocator([16, 32, 48, 64, 128, 256, 512, 1024, 2048, 4096]))
    left.yaxis.set_major_formatter(ticker.FuncFormatter(thousands))
    left.yaxis.set_minor_formatter(ticker.NullFormatter())
    left.set_xlabel("nodes \u00d7 programs (pairs)")
    left.set_ylabel("operator peak RSS (MiB)")
    left.set_title("Memory")
    left.xaxis.set_major_formatter(ticker.FuncFormatter(thousands))
    left.grid(True, which="major", alpha=0.4)
    left.grid(True, which="minor", axis="x", alpha=0.15)
    left.legend(loc="upper left")

    # ---- Right: convergence times ----
    for n in program_counts:
        group = [p for p in points if int(p["programs"]) == n]
        for field, _label, marker, factor in TIME_METRICS:
            xs, ys, _nodes = series(group, field, factor)
            if xs:
                right.plot(xs, ys, marker=marker, markersize=7, linewidth=1.6,
                           color=colours[n], zorder=3)
    label_target(right, TIME_TARGET_S[0], TIME_TARGET_S[1], "left")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("nodes \u00d7 programs (pairs)")
    right.set_ylabel("time (s)")
    right.set_title("Convergence")
    right.xaxis.set_major_formatter(ticker.FuncFormatter(thousands))
    right.yaxis.set_major_formatter(ticker.FuncFormatter(thousands))
    right.grid(True, which="major", alpha=0.4)
    right.grid(True, which="minor", alpha=0.15)

    # Two legends: colour = program count, marker = metric. The handles are
    # stand-ins (not drawn) since each plotted line mixes both.
    colour_handles = [Line2D([], [], color=colours[n], linewidth=2, label=f"{n:,} programs")
                      for n in program_counts]
    marker_handles = [Line2D([], [], color="0.3", marker=marker, linestyle="none",
                             markersize=7, label=label)
                      for _field, label, marker, _factor in TIME_METRICS]
    first = right.legend(handles=colour_handles, loc="upper left", fontsize=11)
    right.add_artist(first)  # keep it when the second legend is added
    right.legend(handles=marker_handles, loc="lower right", fontsize=11)

    # ---- Title ----
    fig.suptitle(TITLE, fontsize=16, y=0.985)
    top = 0.95
    if machines:
        fig.text(0.5, 0.93, "; ".join(machines), ha="center", va="center",
                 fontsize=11, color="0.3")
        top = 0.945
    fig.tight_layout(rect=(0, 0, 1, top))

    out_dir = os.path.dirname(output)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description="Plot the bpfleet operator scale benchmark.")
    parser.add_argument("input", nargs="?", default=DEFAULT_INPUT,
                        help="JSON-lines file (default: docs/scale.jsonl)")
    parser.add_argument("output", nargs="?", default=DEFAULT_OUTPUT,
                        help="PNG to write (default: docs/scale.png)")
    args = parser.parse_args()

    try:
        import matplotlib
    except ImportError:
        print("plot-scale.py: matplotlib is missing; run `apt-get install -y python3-matplotlib` "
              "(Debian) or `pip install matplotlib`", file=sys.stderr)
        return 2
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from matplotlib.lines import Line2D

    try:
        points, machines = read_points(args.input)
    except OSError as e:
        print(f"plot-scale.py: cannot read {args.input}: {e}", file=sys.stderr)
        return 1
    if not points:
        print(f"plot-scale.py: no usable points in {args.input}", file=sys.stderr)
        return 1

    plot(points, machines, args.output, plt, ticker, Line2D)
    print(f"wrote {args.output} ({len(points)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
