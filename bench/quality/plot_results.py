#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Plots and tabulates kv_quality results (bench/quality/kv_quality.cpp) from its CSV files.

Usage: python3 bench/quality/plot_results.py [--png OUT.png] [--tables] [--layer-budget F] [--exclude A,B] CSV [CSV ...]

Reads every ``ppl`` row (ppl,preset,budget,ppl,kv_kept,err_layer0..) and ``needle`` row
(needle,preset,budget,context,depth,hit,kv_kept) of the given files; bench/quality/csr_quality --csv
writes the same rows for preset ``csr`` (budget: the share of an fp16 cache its codes take).
--png draws, per preset against the budget: perplexity relative to the full cache, the
attention-output error averaged over layers, and pass-key accuracy per needle context (hits over
the depths); needs matplotlib.
--tables prints Markdown tables: a summary per (preset, budget), pass-key hits per context and per
trial (context, depth), and the per-layer attention error at budget --layer-budget (default 0.2).
--exclude leaves the named presets out of the plot (not out of the tables), e.g. one whose perplexity
would stretch the axis.
"""

import argparse
import csv
import sys
from collections import defaultdict


def read_rows(paths):
    """Returns (ppl, needle).

    ppl[preset][budget] = {"ppl", "kept", "errors"}; needle[context][preset][budget] = {depth: hit}.
    """
    ppl = defaultdict(dict)
    needle = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if not row:
                    continue
                if row[0] == "ppl":
                    ppl[row[1]][float(row[2])] = {"ppl": float(row[3]), "kept": float(row[4]),
                                                  "errors": [float(x) for x in row[5:]]}
                elif row[0] == "needle":
                    needle[int(row[3])][row[1]][float(row[2])][float(row[4])] = int(row[5])
                else:
                    sys.exit(f"plot_results.py: {path}: unknown row kind {row[0]!r}")
    return ppl, needle


def percent(budget):
    """The budget as the tables print it: 10%, 12.5% (CSR's code sizes are not whole percents)."""
    return f"{100 * budget:.4g}%"


def mean(xs):
    return sum(xs) / len(xs)


def presets_of(ppl, needle):
    """Presets in first-seen order, without the full-cache reference."""
    seen = list(ppl) + [p for c in needle.values() for p in c]
    return [p for p in dict.fromkeys(seen) if p != "full"]


def configs_of(ppl, needle, presets):
    """(preset, budget) pairs in preset order, budgets ascending."""
    out = []
    for p in presets:
        budgets = set(ppl.get(p, {})) | {b for c in needle.values() for b in c.get(p, {})}
        out += [(p, b) for b in sorted(budgets)]
    return out


def print_tables(ppl, needle, layer_budget):
    presets = presets_of(ppl, needle)
    contexts = sorted(needle)
    full = ppl["full"][1.0]["ppl"] if "full" in ppl else None
    needle_total = {(p, b): (sum(sum(needle[c][p][b].values()) for c in contexts if b in needle[c].get(p, {})),
                             sum(len(needle[c][p][b]) for c in contexts if b in needle[c].get(p, {})))
                    for p, b in configs_of(ppl, needle, ["full"] + presets)}
    print("| preset | budget | ppl / full | mean attn err | worst layer (err) | KV kept | pass-key hits |")
    print("|---|---|---|---|---|---|---|")
    for p, b in configs_of(ppl, needle, ["full"] + presets):
        r = ppl.get(p, {}).get(b)
        hits, n = needle_total[(p, b)]
        if r and full:
            worst = max(range(len(r["errors"])), key=lambda i: r["errors"][i])
            cells = [f"{r['ppl'] / full:.3f}", f"{mean(r['errors']):.4f}", f"{worst} ({r['errors'][worst]:.3f})",
                     f"{100 * r['kept']:.1f}%"]
        else:
            cells = ["", "", "", ""]
        print(f"| {p} | {percent(b)} | " + " | ".join(cells) + (f" | {hits}/{n} |" if n else " | |"))
    if contexts:
        print("\n| preset | budget | " + " | ".join(f"{c} tokens" for c in contexts) + " |")
        print("|---|---|" + "---|" * len(contexts))
        for p, b in configs_of({}, needle, ["full"] + presets):
            cells = [f"{sum(needle[c][p][b].values())}/{len(needle[c][p][b])}" if b in needle[c].get(p, {}) else ""
                     for c in contexts]
            print(f"| {p} | {percent(b)} | " + " | ".join(cells) + " |")
        trials = sorted({(c, d) for c in contexts for p in needle[c] for b in needle[c][p] for d in needle[c][p][b]})
        print("\nPass key per trial (context @ depth):\n")
        print("| preset | budget | " + " | ".join(f"{c} @ {100 * d:.0f}%" for c, d in trials) + " |")
        print("|---|---|" + "---|" * len(trials))
        for p, b in configs_of({}, needle, ["full"] + presets):
            cells = [{1: "hit", 0: "miss", None: ""}[needle[c].get(p, {}).get(b, {}).get(d)] for c, d in trials]
            print(f"| {p} | {percent(b)} | " + " | ".join(cells) + " |")
    at = [p for p in presets if layer_budget in ppl.get(p, {})]
    if at:
        print(f"\nPer-layer attention-output relative error at a {100 * layer_budget:.0f}% budget:\n")
        print("| layer | " + " | ".join(at) + " |")
        print("|---|" + "---|" * len(at))
        for layer in range(len(ppl[at[0]][layer_budget]["errors"])):
            print(f"| {layer} | " + " | ".join(f"{ppl[p][layer_budget]['errors'][layer]:.3f}" for p in at) + " |")


def plot(ppl, needle, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = presets_of(ppl, needle)
    markers = "os^vD<>pP*Xhd"
    palette = plt.get_cmap("tab20").colors
    colors = [palette[(2 * i) % 20 + (2 * i) // 20] for i in range(len(presets))]
    seed_methods = {"corm", "corm_budgeted", "kvmerger", "kvmerger_unscaled", "cam", "windowkv"}
    contexts = sorted(needle)
    panels = (2 if ppl else 0) + len(contexts)
    cols = 3
    rows = (panels + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    axes = list(axes.flatten())

    def line(ax, preset, points):
        i = presets.index(preset)
        xs = sorted(points)
        ax.plot([100 * x for x in xs], [points[x] for x in xs], "-" if preset in seed_methods else "--",
                marker=markers[i % len(markers)], color=colors[i], label=preset, markersize=5)

    used = []
    if ppl:
        full = ppl["full"][1.0]["ppl"]
        ax_ppl, ax_err = axes[0], axes[1]
        for p in presets:
            line(ax_ppl, p, {b: r["ppl"] / full for b, r in ppl[p].items()})
            line(ax_err, p, {b: mean(r["errors"]) for b, r in ppl[p].items()})
        ax_ppl.axhline(1.0, color="black", linewidth=0.8)
        ax_ppl.set_yscale("log")
        ax_ppl.set_title(f"perplexity / full cache (full: {full:.2f})")
        ax_err.set_title("attention-output relative error (mean over layers)")
        ax_err.set_ylim(bottom=0)
        used += [ax_ppl, ax_err]
    for context in contexts:
        ax = axes[len(used)]
        full_hits = list(needle[context]["full"][1.0].values())
        for p in presets:
            if p in needle[context]:
                line(ax, p, {b: mean(list(h.values())) for b, h in needle[context][p].items()})
        ax.set_title(f"pass-key accuracy, {context} tokens ({len(full_hits)} depths; full: {sum(full_hits)}/{len(full_hits)})")
        ax.set_ylim(-0.05, 1.05)
        used.append(ax)
    for ax in used:
        ax.set_xlabel("budget (% of KV entries per head; csr: % of fp16 bytes)")
        ax.grid(True, alpha=0.3)
    legend_ax = axes[len(used)]
    for ax in axes[len(used):]:
        ax.axis("off")
    handles, labels = used[0].get_legend_handles_labels()
    legend_ax.legend(handles, labels, loc="center", ncol=2, fontsize=9,
                     title="solid: docs/methods.md 1-4 methods, dashed: baselines")
    fig.suptitle("kvcompact presets on SmolLM2-135M-Instruct (bench/quality/kv_quality)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="kv_quality --csv files")
    parser.add_argument("--png", help="write the plot here")
    parser.add_argument("--tables", action="store_true", help="print Markdown tables")
    parser.add_argument("--layer-budget", type=float, default=0.2, help="budget of the per-layer error table")
    parser.add_argument("--exclude", default="", help="comma-separated presets left out of the plot")
    args = parser.parse_args()
    if not args.png and not args.tables:
        parser.error("nothing to do: pass --png and/or --tables")
    ppl, needle = read_rows(args.csv)
    if args.tables:
        print_tables(ppl, needle, args.layer_budget)
    if args.png:
        excluded = set(filter(None, args.exclude.split(",")))
        plot({k: v for k, v in ppl.items() if k not in excluded},
             {c: {k: v for k, v in by_preset.items() if k not in excluded} for c, by_preset in needle.items()}, args.png)


if __name__ == "__main__":
    main()
