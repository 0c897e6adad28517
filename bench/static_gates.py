#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Static performance gates of the CUDA kernels (no GPU needed).

Builds the hot kernels (every __global__ kernel that bench/kernel_bench.cu instantiates) for sm_90
with `-Xptxas -v` and reads, per kernel: registers, spill stores/loads, stack frame, static shared
memory (ptxas), and the design it states in `__launch_bounds__(threads, min_blocks)` (the PTX's
.maxntid and .minnctapersm). With --plan-binary (kernel_bench built against the CPU emulator), it
runs the benchmark with KVEMU_SKIP_KERNELS=1 to record every launch (grid, block, dynamic shared
memory) at the benchmark's shapes (Llama-3.1-8B layer: 32 query heads, 8 KV heads, head_dim 128,
bf16), and computes each launch's theoretical occupancy from the sm_90 limits (64K registers per SM
allocated per warp in units of 256, 4 sub-partitions; 228 KB shared memory per SM with 1 KB
reserved per block, 128-byte granularity; 2048 threads; 32 blocks).

It also counts each kernel's global loads, stores and async copies by width (PTX).

It FAILS when a kvcompact kernel spills, when a kernel that streams the cache (--wide-access) has
no 16-byte global access, when a launch runs more threads per block than the kernel's
launch bounds allow, or when a launch's theoretical occupancy (blocks per SM) is below the min_blocks
its launch bounds state (1 when they state none). Kernels without launch bounds are listed as a
warning (a failure with --strict). Names are matched generically: any kernel in namespace kvcompact
is gated, whatever it is called.

Failures listed in a --known file (bench/static_gates_known.txt in CI: today's kernels that the
open items of issue 10 rewrite) are reported as KNOWN and do not fail the run; an entry that no
longer matches any failure does, so the list can only shrink.

Exit status: 0 gates hold, 1 a gate fails, 77 no nvcc (skipped), 2 usage or tool error.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# sm_90 (H100 / H200) limits, as in the CUDA occupancy calculator (cuda_occupancy.h).
SM90 = dict(
    regs_per_sm=65536,
    regs_per_block=65536,
    reg_granularity=256,
    sub_partitions=4,
    max_regs_per_thread=255,
    smem_per_sm=228 * 1024,
    smem_per_block_optin=227 * 1024,
    smem_reserved_per_block=1024,
    smem_granularity=128,
    max_threads_per_sm=2048,
    max_blocks_per_sm=32,
    warp=32,
)


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def occupancy(regs: int, threads: int, smem: int, limits: dict = SM90) -> tuple[int, str]:
    """Theoretical resident blocks per SM and the limiting resource."""
    warps = -(-threads // limits["warp"])
    by = {"blocks": limits["max_blocks_per_sm"], "threads": limits["max_threads_per_sm"] // limits["warp"] // warps}
    regs_per_warp = round_up(max(regs, 1) * limits["warp"], limits["reg_granularity"])
    if regs > limits["max_regs_per_thread"] or regs_per_warp * round_up(warps, limits["sub_partitions"]) > limits["regs_per_block"]:
        by["registers"] = 0
    else:
        warps_per_sub = limits["regs_per_sm"] // limits["sub_partitions"] // regs_per_warp
        by["registers"] = warps_per_sub * limits["sub_partitions"] // warps
    if smem > limits["smem_per_block_optin"]:
        by["shared memory"] = 0
    else:
        per_block = round_up(smem + limits["smem_reserved_per_block"], limits["smem_granularity"])
        by["shared memory"] = limits["smem_per_sm"] // per_block
    limiter = min(by, key=lambda k: by[k])
    return by[limiter], limiter


@dataclass
class Kernel:
    mangled: str
    name: str = ""  # demangled, ABI namespace removed
    regs: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    static_smem: int = 0
    max_threads: int | None = None  # .maxntid (product)
    min_blocks: int | None = None  # .minnctapersm
    launches: list = field(default_factory=list)  # (row, grid blocks, block threads, dynamic smem)
    global_widths: dict = field(default_factory=dict)  # bytes per access -> global ld/st/cp.async instructions in the PTX

    @property
    def ours(self) -> bool:
        return self.name.startswith("void kvcompact::") or self.name.startswith("kvcompact::")


def find_nvcc(given: str | None) -> str | None:
    for candidate in (given, os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


ABI_NAMESPACE = re.compile(r"\bv\d+_\d+_(?:host|sm(?:_\d+)+)::")


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> demangled name without kvcompact's inline ABI namespace (c++filt from binutils)."""
    if not names:
        return {}
    out = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True, text=True, check=True).stdout.splitlines()
    return {m: ABI_NAMESPACE.sub("", d) for m, d in zip(names, out)}


def short(name: str) -> str:
    """Kernel name and template arguments without namespaces or parameter list."""
    body = name[5:] if name.startswith("void ") else name
    depth, cut = 0, len(body)
    for i, c in enumerate(body):  # the parameter list starts at the first '(' outside template brackets
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            cut = i
            break
    return re.sub(r"\b[A-Za-z_]\w*::", "", body[:cut])


# Global-memory accesses in PTX: ld/st (vector count x element size) and cp.async (its byte count).
GLOBAL_ACCESS = re.compile(r"\b(?:ld|st)\.global((?:\.[\w:]+)*)\s")
ASYNC_COPY = re.compile(r"\bcp\.async\.c[ag]\.shared(?:::cta)?\.global(?:\.[\w:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(\d+)")
ELEMENT_BITS = re.compile(r"^[busf](8|16|32|64|128)$")


def global_access_widths(body: str) -> dict[int, int]:
    """Bytes per access -> number of global load/store/async-copy instructions in a PTX function body."""
    widths: dict[int, int] = {}
    for m in GLOBAL_ACCESS.finditer(body):
        count, bits = 1, 0
        for part in m.group(1).split(".")[1:]:
            if part in ("v2", "v4", "v8"):
                count = int(part[1:])
            elif e := ELEMENT_BITS.match(part):
                bits = int(e.group(1))
        if bits:
            widths[count * bits // 8] = widths.get(count * bits // 8, 0) + 1
    for m in ASYNC_COPY.finditer(body):
        widths[int(m.group(1))] = widths.get(int(m.group(1)), 0) + 1
    return widths


def widths_text(widths: dict[int, int]) -> str:
    return ", ".join(f"{b} B: {widths[b]}" for b in sorted(widths, reverse=True)) or "none"


def compile_kernels(nvcc: str, sources: list[Path], arch: str, flags: list[str], work: Path) -> dict[str, Kernel]:
    kernels: dict[str, Kernel] = {}
    for index, source in enumerate(sources):
        keep = work / f"keep{index}"
        keep.mkdir()
        cmd = [nvcc, "-std=c++20", "-O3", f"-arch=sm_{arch}", f"-I{ROOT / 'include'}", "-Xptxas", "-v", "-keep", "-keep-dir", str(keep),
               "-c", str(source), "-o", str(keep / "out.o"), *flags]
        print("+ " + " ".join(cmd), flush=True)
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.stderr.write(run.stdout + run.stderr)
            raise SystemExit(f"static_gates: nvcc failed on {source}")
        current = None
        for line in run.stderr.splitlines():
            if m := re.search(r"Compiling entry function '([^']+)' for 'sm_\w+'", line):
                current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            elif current and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
                current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
            elif current and (m := re.search(r"Used (\d+) registers", line)):
                current.regs = int(m.group(1))
                s = re.search(r"(\d+) bytes smem", line)
                current.static_smem = int(s.group(1)) if s else 0
                current = None
        for ptx in keep.glob("*.ptx"):
            text = ptx.read_text()
            entries = list(re.finditer(r"\.entry\s+(\S+)\s*\((.*?)\)\s*(.*?)\{", text, re.S))
            for i, m in enumerate(entries):
                k = kernels.get(m.group(1))
                if not k:
                    continue
                k.global_widths = global_access_widths(text[m.end():entries[i + 1].start() if i + 1 < len(entries) else len(text)])
                if n := re.search(r"\.maxntid\s+(\d+),\s*(\d+),\s*(\d+)", m.group(3)):
                    k.max_threads = int(n.group(1)) * int(n.group(2)) * int(n.group(3))
                if n := re.search(r"\.minnctapersm\s+(\d+)", m.group(3)):
                    k.min_blocks = int(n.group(1))
    names = demangle(list(kernels))
    for k in kernels.values():
        k.name = names[k.mangled]
    return kernels


LAUNCH = re.compile(r"kvemu-launch object=(\S+) offset=0x([0-9a-f]+) grid=(\d+),(\d+),(\d+) block=(\d+),(\d+),(\d+) shared=(\d+)")
ROW = re.compile(r"^\|\s*([^|]*?)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|")


def record_launches(binary: Path, sm_count: int, kernels: dict[str, Kernel]) -> dict[str, int]:
    """Runs the emulated benchmark, attaches each launch to the kernel and benchmark row it belongs to;
    returns the rows in the benchmark's order."""
    env = dict(os.environ, KVEMU_SKIP_KERNELS="1", KVEMU_LAUNCH_LOG="-", KVEMU_SM_COUNT=str(sm_count))
    print(f"+ KVEMU_SKIP_KERNELS=1 KVEMU_LAUNCH_LOG=- KVEMU_SM_COUNT={sm_count} {binary} --reps 1", flush=True)
    run = subprocess.run([str(binary), "--reps", "1"], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.stderr.write(run.stdout[-4000:] + run.stderr[-4000:])
        raise SystemExit(f"static_gates: {binary} failed (status {run.returncode})")
    symbols: dict[tuple[str, int], str] = {}
    by_name = {k.name: k for k in kernels.values()}
    pending: list[tuple] = []
    rows: dict[str, int] = {}
    for line in run.stdout.splitlines():
        if m := LAUNCH.search(line):
            obj, offset = m.group(1), int(m.group(2), 16)
            if (obj, offset) not in symbols:
                nm = subprocess.run(["nm", "--defined-only", obj], capture_output=True, text=True, check=True).stdout
                table = {}
                for entry in nm.splitlines():
                    parts = entry.split()
                    if len(parts) == 3:
                        table[int(parts[0], 16)] = parts[2]
                names = demangle(list(table.values()))
                for address, mangled in table.items():
                    symbols[(obj, address)] = names[mangled]
            g = [int(x) for x in m.group(3, 4, 5)]
            b = [int(x) for x in m.group(6, 7, 8)]
            pending.append((symbols.get((obj, offset), "?"), g[0] * g[1] * g[2], b[0] * b[1] * b[2], int(m.group(9))))
        elif m := ROW.match(line):
            row = f"{m.group(1)}, N={m.group(2)}, B={m.group(3)}"
            rows.setdefault(row, len(rows))
            for name, blocks, threads, smem in pending:
                k = by_name.get(name)
                if k and (row, blocks, threads, smem) not in k.launches:
                    k.launches.append((row, blocks, threads, smem))
            pending = []
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nvcc", help="nvcc to use (default: $CUDACXX, PATH, /usr/local/cuda/bin/nvcc)")
    parser.add_argument("--source", action="append", type=Path, help="CUDA source instantiating the hot kernels (default bench/kernel_bench.cu)")
    parser.add_argument("--arch", default="90", help="SM architecture (default 90; the limits are sm_90's)")
    parser.add_argument("--plan-binary", type=Path, help="bench/kernel_bench built against the CPU emulator (launch configurations)")
    parser.add_argument("--sm-count", type=int, default=132, help="multiprocessors of the target GPU (H100 SXM / H200: 132)")
    parser.add_argument("--tokens", type=int, default=32768, help="cached tokens N of the benchmark rows shown (all rows are gated)")
    parser.add_argument("--strict", action="store_true", help="also fail on kvcompact kernels without __launch_bounds__")
    parser.add_argument("--nvcc-flag", action="append", default=[], help="extra nvcc flag (repeatable)")
    parser.add_argument("--known", type=Path,
                        help="file of known failures (a regex of the failure message and the issue item that removes it, "
                             "tab-separated): reported as KNOWN; an entry that matches no failure fails the run")
    parser.add_argument("--wide-access", default=r"decode_partial_kernel|window_scores|compact",
                        help="regex of the kernels that stream the cache and must move it in 16-byte global accesses "
                             "(ld/st .v4 of 32-bit, .v2 of 64-bit, .b128, or cp.async of 16 bytes)")
    args = parser.parse_args()

    nvcc = find_nvcc(args.nvcc)
    if not nvcc:
        print("SKIPPED: nvcc not found; static gates need the CUDA compiler (no GPU).")
        return 77
    sources = args.source or [ROOT / "bench" / "kernel_bench.cu"]
    with tempfile.TemporaryDirectory(prefix="kvcompact_gates_") as tmp:
        kernels = compile_kernels(nvcc, sources, args.arch, args.nvcc_flag, Path(tmp))
    rows = record_launches(args.plan_binary, args.sm_count, kernels) if args.plan_binary else {}
    ours = sorted((k for k in kernels.values() if k.ours), key=lambda k: short(k.name))
    if not ours:
        print("static_gates: no kvcompact kernel found in the sources", file=sys.stderr)
        return 2

    failures: list[str] = []
    warnings: list[str] = []
    print(f"\n## Kernels for sm_{args.arch} (ptxas -v; launch bounds from the PTX)\n")
    print("| kernel | regs | spill st/ld B | stack B | static smem B | launch bounds (threads, min blocks/SM) | global accesses by width (PTX) |")
    print("|---|---:|---:|---:|---:|---|---|")
    wide = re.compile(args.wide_access)
    for k in ours:
        bounds = "none" if k.max_threads is None else f"{k.max_threads}, {k.min_blocks if k.min_blocks is not None else '-'}"
        streams = bool(wide.search(short(k.name)))
        print(f"| `{short(k.name)}` | {k.regs} | {k.spill_stores}/{k.spill_loads} | {k.stack} | {k.static_smem} | {bounds} | "
              f"{widths_text(k.global_widths)}{' (streams the cache)' if streams else ''} |")
        if streams and not k.global_widths.get(16):
            failures.append(f"{short(k.name)}: streams the cache but has no 16-byte global access ({widths_text(k.global_widths)})")
        if k.spill_stores or k.spill_loads:
            failures.append(f"{short(k.name)}: spills ({k.spill_stores} B stored, {k.spill_loads} B loaded; {k.regs} registers)")
        if k.max_threads is None:
            (failures if args.strict else warnings).append(f"{short(k.name)}: no __launch_bounds__(threads, min_blocks): its design occupancy is unstated")

    print(f"\n## Launches at the benchmark shapes (N = {args.tokens}; {args.sm_count} SMs; occupancy from the sm_90 limits)\n")
    if not args.plan_binary:
        print("(no --plan-binary: launch configurations not recorded; occupancy below uses the launch bounds' block size and static shared memory only)\n")
    print("| benchmark row | kernel | blocks | threads | dyn smem B | blocks/SM (limit) | occupancy | waves | design min | |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---|")
    shown = []
    for k in ours:
        design = k.min_blocks or 1
        launches = k.launches or ([("(not launched by the benchmark)", 0, k.max_threads, 0)] if k.max_threads else [])
        for order, (row, blocks, threads, smem) in enumerate(launches):
            per_sm, limiter = occupancy(k.regs, threads, k.static_smem + smem)
            ok = per_sm >= design and (k.max_threads is None or threads <= k.max_threads)
            if per_sm < design:
                failures.append(f"{short(k.name)} [{row}]: {per_sm} blocks/SM (limited by {limiter}) < {design} its launch bounds state")
            if k.max_threads is not None and threads > k.max_threads:
                failures.append(f"{short(k.name)} [{row}]: launched with {threads} threads > {k.max_threads} of its launch bounds")
            if f"N={args.tokens}," in row or not blocks:
                warps = -(-threads // 32)
                waves = f"{blocks / max(1, per_sm * args.sm_count):.2f}" if blocks else "-"
                shown.append((rows.get(row, len(rows)), order, f"| {row} | `{short(k.name)}` | {blocks or '-'} | {threads} | {smem} | "
                              f"{per_sm} ({limiter}) | {100 * per_sm * warps / 64:.0f}% | {waves} | {design} | {'ok' if ok else 'FAIL'} |"))
    for _, _, line in sorted(shown):
        print(line)

    print()
    for w in warnings:
        print(f"WARNING: {w}")
    known = read_known(args.known) if args.known else []
    for pattern, issue in known:
        matched = [f for f in failures if pattern.search(f)]
        for f in matched:
            print(f"KNOWN ({issue}): {f}")
        failures = [f for f in failures if f not in matched]
        if not matched:
            failures.append(f"known failure '{pattern.pattern}' ({issue}) no longer occurs: delete it from {args.known}")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"static_gates: {len(ours)} kvcompact kernels, {sum(len(k.launches) for k in ours)} launch configurations, "
          f"{len(failures)} failures, {len(warnings)} warnings")
    return 1 if failures else 0


def read_known(path: Path) -> list[tuple[re.Pattern, str]]:
    """Entries of a known-failures file: `regex<TAB>issue` lines; `#` starts a comment line."""
    entries = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pattern, _, issue = line.partition("\t")
            entries.append((re.compile(pattern), issue.strip() or "no issue named"))
    return entries


if __name__ == "__main__":
    sys.exit(main())
