#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Static resources of the decode kernels, no GPU needed: builds every compiled variant of
# decode_attention_kernel (head_dim 64/128/256 x group 1/2/4/8, bf16 and fp32 on BHSD, fp16 paged),
# decode_update_kernel and append_kernel (H2O, BHSD bf16) with nvcc -Xptxas -v for each architecture,
# and prints per kernel: registers, spill stores/loads, stack frame, shared memory (static + the
# kernel's dynamic size), the design occupancy of its __launch_bounds__ and the occupancy its
# registers and shared memory allow, and counts 16-byte cp.async copies, ld.shared.v4 and local-memory
# accesses in the PTX. Exits 1 when a kernel spills, allows less than its design or touches local memory.
#
#   bash bench/decode_ptxas.sh [arch ...]     (default: 90 80)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
archs=("$@")
[ "${#archs[@]}" -gt 0 ] || archs=(90 80)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/variants.cu" <<'EOF'
#include <kvcompact/cuda.cuh>
#include <cstdio>
namespace kc = kvcompact;
using namespace kc::cuda::detail;
// Prints "name dynamic_shared_bytes design_blocks_sm90 design_blocks_sm80" per variant (host code: runs without a GPU).
template <class T, class Layout>
void list(const char* type, const char* layout) {
  for (int head_dim : {64, 128, 256})
    for (int group : {1, 2, 4, 8}) {  // the compiled buckets
      const auto k = decode_kernel_for<T, Layout>(head_dim, group);
      std::printf("decode_attention_kernel<%s,%s,%d,%d> %zu %d %d\n", type, layout, head_dim, k.group, k.shared_bytes,
                  decode_design_blocks(k.group, static_cast<int>(k.shared_bytes), 90),
                  decode_design_blocks(k.group, static_cast<int>(k.shared_bytes), 80));
    }
}
int main() {
  list<kc::bfloat16_t, kc::layouts::strided>("bfloat16_t", "strided");
  list<float, kc::layouts::strided>("float", "strided");
  list<kc::half_t, kc::layouts::paged>("half_t", "paged");
  using P = decltype(kc::policies::h2o(100, 8));
  // taking the addresses instantiates the two kernels
  if (&decode_update_kernel<P, kc::bfloat16_t, kc::layouts::strided> == nullptr || &append_kernel<P, kc::bfloat16_t, kc::layouts::strided> == nullptr) return 1;
  std::printf("decode_update_kernel<h2o,bfloat16_t,strided> %zu 4 4\n", update_shared_bytes(4, 8));
  std::printf("append_kernel<h2o,bfloat16_t,strided> 0 2 2\n");
}
EOF
status=0
for arch in "${archs[@]}"; do
  nvcc -std=c++20 -O3 -arch="sm_$arch" -Xptxas -v -I"$root/include" "$work/variants.cu" -o "$work/variants_$arch" > "$work/ptxas_$arch.txt" 2>&1 ||
    { cat "$work/ptxas_$arch.txt"; exit 1; }
  "$work/variants_$arch" > "$work/shared_$arch.txt"
  if grep -i "ptxas.*warning" "$work/ptxas_$arch.txt"; then status=1; fi  # the library's builds pass --warning-as-error to ptxas
  python3 - "$arch" "$work/ptxas_$arch.txt" "$work/shared_$arch.txt" <<'EOF' || status=1
import re, subprocess, sys
arch, ptxas, shared = sys.argv[1], sys.argv[2], sys.argv[3]
smem_per_sm = 228 * 1024 if int(arch) >= 90 else 164 * 1024 if int(arch) in (80, 87) else 100 * 1024
dynamic = {}
for line in open(shared):
    name, size, design90, design80 = line.split()
    dynamic[name] = (int(size), int(design90) if int(arch) >= 90 else int(design80))
def short(mangled):
    name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    name = re.sub(r"kvcompact::v\w+::", "", name).replace("cuda::detail::", "").replace("layouts::", "").replace("kvcompact::", "")
    m = re.match(r"void (\w+)<(.*)>\(", name)
    if not m: return name
    kernel, args = m.group(1), m.group(2)
    if kernel == "decode_attention_kernel":
        t, layout, d, g = [a.strip() for a in args.split(",")]
        return f"{kernel}<{t},{layout},{d},{g}>"
    t = "bfloat16_t"
    return f"{kernel}<h2o,{t},strided>"
rows, entry = [], None
for line in open(ptxas):
    m = re.search(r"Compiling entry function '(\S+)' for 'sm_", line)
    if m: entry = {"name": short(m.group(1))}
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and entry is not None: entry.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
    m = re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)
    if m and entry is not None:
        entry.update(regs=int(m.group(1)), smem=int(m.group(2)))
        rows.append(entry)
        entry = None
print(f"\nsm_{arch} (nvcc -O3 -arch=sm_{arch} -Xptxas -v): blocks per SM allowed by registers (64K, 128-thread blocks, 256 for the state pass and insertion) and shared memory ({smem_per_sm // 1024} KiB, 1 KiB reserved per block)\n")
print("| kernel | regs | spill st/ld | stack | smem static + dynamic | design blocks/SM | by regs | by smem |")
print("|---|---|---|---|---|---|---|---|")
bad = False
for r in rows:
    dyn, design = dynamic.get(r["name"], (0, 1))
    threads = 128 if r["name"].startswith("decode_attention") else 256
    warps = (threads + 31) // 32
    regs_per_warp = ((r["regs"] * 32 + 255) // 256) * 256
    by_regs = 65536 // (regs_per_warp * warps)
    total = r["smem"] + dyn
    by_smem = smem_per_sm // (total + 1024) if total else 32
    ok = r["spill_st"] == 0 and r["spill_ld"] == 0 and min(by_regs, by_smem) >= design
    bad |= not ok
    print(f"| {r['name']} | {r['regs']} | {r['spill_st']}/{r['spill_ld']} | {r['stack']} | {r['smem']} + {dyn} | {design} | {by_regs} | {by_smem}{'' if ok else ' **below design**'} |")
sys.exit(1 if bad else 0)
EOF
  # The PTX of the same kernels: 16-byte asynchronous copies and shared loads, no local memory.
  nvcc -std=c++20 -O3 -arch="sm_$arch" -I"$root/include" -ptx "$work/variants.cu" -o "$work/variants_$arch.ptx"
  copies=$(grep -c "cp.async.cg.shared.global.L2::128B.*16;" "$work/variants_$arch.ptx" || true)
  vector_loads=$(grep -c "ld.shared.v4" "$work/variants_$arch.ptx" || true)
  local_accesses=$(grep -cE "(ld|st)\.local" "$work/variants_$arch.ptx" || true)
  echo
  echo "sm_$arch PTX: $copies cp.async 16-byte copies, $vector_loads ld.shared.v4, $local_accesses local-memory accesses"
  [ "$local_accesses" -eq 0 ] && [ "$copies" -gt 0 ] || status=1
done
exit $status
