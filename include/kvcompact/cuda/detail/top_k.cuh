// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Grid-wide top-k: in each scope (one head, or the heads of a layer ranked together as
/// Ada-KV does), flags the k best candidates by kvcompact's ranking (detail::ranks_before: higher key
/// first, then lower position; across the segments of a scope, lower segment first), over many
/// blocks per scope.
///
/// Method: a radix select on 32-bit order-preserving keys. Three digit passes (11, 11 and 10 bits)
/// and one marking pass, each a launch of 2,048-item tiles (one block each) that reads the keys once:
/// a block builds the histogram of its tile's digits in shared memory and adds it to its scope's
/// histogram; the last block of the scope to arrive finds the digit holding the k-th best key and
/// narrows the scope's prefix. A scope is decided as soon as every key matching the prefix is kept
/// (most scopes after one or two passes), and later passes skip it at once. The marking pass flags
/// keys above the threshold, and keys equal to it when all of them fit; otherwise (exact ties at the
/// threshold) it ranks those ties by position across the scope's tiles with a decoupled look-back.
/// NaN keys are never kept and are recorded as device_fault::nan_score.
///
/// CCCL 3.5 (PyPI `nvidia-cuda-cccl` 13.3.5.0.6) has `cub::DeviceTopK` and `cub::DeviceBatchedTopK`, which only
/// implement an unspecified tie-break, so the exact ranking would need 64-bit keys (score, position) with twice
/// the passes and key bytes, and they cannot run under the CPU emulator; this file uses CUB's block
/// collectives of the toolkit's CCCL instead.
#pragma once

#include <kvcompact/cuda/detail/cub.cuh>
#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/grid_sync.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/look_back.cuh>
#include <kvcompact/numeric.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Items of one array per segment: item i of segment s lives at `data[s * stride + i]`.
template <class Value>
struct segment_array {
  Value* data = nullptr;  ///< segment 0, item 0 (nullptr: the array is absent)
  index_t stride = 0;     ///< elements between two segments
  /// The first item of a segment. @param segment the segment @return its items
  KVCOMPACT_HOST_DEVICE Value* segment(index_t segment) const { return data + segment * stride; }
};

/// @brief One top-k request over device arrays (see launch_top_k()). Items of a segment are ranked
/// by key, higher first; equal keys by (segment, item index), lower first, so items must be stored
/// in position order for kvcompact's tie rule.
struct top_k_problem {
  segment_array<const float> keys;                ///< rank keys
  const std::int32_t* counts = nullptr;           ///< [segments] items per segment (at most max_items)
  index_t segments = 0;                           ///< number of segments
  index_t segments_per_scope = 1;                 ///< consecutive segments ranked together (1: per head)
  index_t max_items = 0;                          ///< most items a segment holds (sizes the grid)
  const std::int32_t* k = nullptr;                ///< [scopes] items to keep per scope (<= 0: none; all eligible if fewer)
  float floor = -INFINITY;                        ///< keys below it are never kept
  segment_array<const std::uint8_t> candidates{}; ///< optional: nonzero marks an item that may be kept (absent: all)
  segment_array<std::uint8_t> flags{};            ///< optional output: set to 1 for each kept item, others untouched
  segment_array<const std::int32_t> flag_index{}; ///< optional: where item i's flag lives within its segment of flags (absent: i)
  std::int32_t* kept = nullptr;                   ///< optional output [segments]: kept items per segment
  device_status* status = nullptr;                ///< optional: NaN keys are reported here
  index_t segment_layers = 1;                     ///< segment = (sequence * segment_layers + layer) * segment_heads + head,
  index_t segment_heads = 1;                      ///< to name a NaN fault
};

/// Threads per block of the top-k kernels.
inline constexpr int top_k_threads = 256;
/// Keys a thread reads per pass (two 16-byte vectors).
inline constexpr int top_k_items_per_thread = 8;
/// Keys of one tile (one block).
inline constexpr int top_k_tile_items = top_k_threads * top_k_items_per_thread;
/// Blocks per SM the top-k kernels are built for (1536 threads, 40 registers each).
inline constexpr int top_k_min_blocks = 6;
/// Bins of the widest digit.
inline constexpr int top_k_bins = 2048;

/// Digit bits of a radix pass (11, 11, 10: 32 bits in three passes).
KVCOMPACT_HOST_DEVICE constexpr int top_k_digit_bits(int pass) { return pass < 2 ? 11 : 10; }

/// What a scope's radix select knows; the whole struct is zeroed before the first pass.
struct top_k_scope_state {
  unsigned arrivals[3];           ///< blocks done with each digit pass
  unsigned decided;               ///< nonzero once the threshold below is final
  unsigned prefix;                ///< the known top bits of the k-th best ordered key
  unsigned known_bits;            ///< how many top bits of prefix are known
  unsigned remaining;             ///< items still to keep among those whose top bits equal prefix's
  unsigned matching;              ///< eligible items whose top bits equal prefix's
  unsigned tile_claims;           ///< marking pass: tickets handed out (ties ranked in ticket order)
  unsigned padding[7];            ///< keeps the histogram 64-byte aligned
  unsigned histogram[top_k_bins]; ///< the current pass's digit counts
};

/// Where launch_top_k's scratch lives, and the grid's shape.
struct top_k_workspace {
  top_k_scope_state* scopes;  ///< [scopes]
  tile_status* statuses;      ///< [scopes][tiles_per_scope]: tie ranking of the marking pass
  unsigned tiles_per_segment; ///< tiles (blocks) per segment
  unsigned tiles_per_scope;   ///< tiles_per_segment * segments_per_scope
};

/// Tiles (blocks) per segment of at most @p max_items items (at least one).
inline index_t top_k_tiles_per_segment(index_t max_items) {
  const index_t tiles = (max_items + top_k_tile_items - 1) / top_k_tile_items;
  return tiles > 0 ? tiles : 1;
}

/// Bytes of scratch launch_top_k() needs. @param segments segments @param segments_per_scope
/// segments ranked together @param max_items most items per segment @return the size in bytes
inline std::size_t top_k_workspace_bytes(index_t segments, index_t segments_per_scope, index_t max_items) {
  const auto round = [](std::size_t bytes) { return (bytes + 255) / 256 * 256; };
  const index_t scopes = segments_per_scope > 0 ? segments / segments_per_scope : 0;
  return round(static_cast<std::size_t>(scopes) * sizeof(top_k_scope_state)) +
         round(static_cast<std::size_t>(segments * top_k_tiles_per_segment(max_items)) * sizeof(tile_status));
}

/// The 32-bit unsigned key whose order is @p key's (larger float, larger key). -0 and +0 map to the
/// same key, as ranks_before ties them. NaN is the caller's to exclude.
KVCOMPACT_HOST_DEVICE inline std::uint32_t ordered_key(float key) {
  const std::uint32_t bits = ::kvcompact::detail::float_bits(key == 0.0f ? 0.0f : key);
  return (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
}

/// Whether the top @p known bits of @p key equal those of @p prefix (always, for 0 bits).
KVCOMPACT_HOST_DEVICE inline bool top_bits_equal(std::uint32_t key, std::uint32_t prefix, unsigned known) {
  return known == 0 || ((key ^ prefix) >> (32 - known)) == 0;
}

/// Whether the top @p known bits of @p key exceed those of @p prefix (never, for 0 bits).
KVCOMPACT_HOST_DEVICE inline bool top_bits_above(std::uint32_t key, std::uint32_t prefix, unsigned known) {
  return known != 0 && (key >> (32 - known)) > (prefix >> (32 - known));
}

/// A thread's share of a tile: two rounds of four consecutive items (round r, element e is item
/// `first + r * 4 * top_k_threads + 4 * threadIdx.x + e`), so every read is one coalesced 16-byte vector.
struct top_k_thread_items {
  std::uint32_t key[top_k_items_per_thread];  ///< ordered keys
  unsigned eligible = 0;                      ///< bit i: item i exists, is a candidate, not NaN, not below the floor
  int first_nan = -1;                         ///< index within the segment of the first NaN key, or -1
};

/// Item index within its segment of this thread's item @p i of the tile starting at @p first.
__device__ inline int top_k_item_index(int first, int i) {
  return first + (i / 4) * 4 * top_k_threads + 4 * static_cast<int>(threadIdx.x) + i % 4;
}

/// Reads this thread's items of the tile starting at item @p first of @p segment (@p count items).
__device__ inline top_k_thread_items load_top_k_items(const top_k_problem& p, index_t segment, int first, int count) {
  top_k_thread_items items;
  const float* keys = p.keys.segment(segment);
  const std::uint8_t* candidates = p.candidates.data != nullptr ? p.candidates.segment(segment) : nullptr;
  const bool vectors = reinterpret_cast<std::uintptr_t>(keys) % 16 == 0;
  KVCOMPACT_UNROLL
  for (int round = 0; round < top_k_items_per_thread / 4; ++round) {
    const int at = top_k_item_index(first, 4 * round);
    std::uint32_t bits[4] = {0, 0, 0, 0};
    if (vectors && at + 4 <= count) {
      const uint4 v = *reinterpret_cast<const uint4*>(keys + at);
      bits[0] = v.x, bits[1] = v.y, bits[2] = v.z, bits[3] = v.w;
    } else {
      KVCOMPACT_UNROLL
      for (int e = 0; e < 4; ++e)
        if (at + e < count) bits[e] = ::kvcompact::detail::float_bits(keys[at + e]);
    }
    KVCOMPACT_UNROLL
    for (int e = 0; e < 4; ++e) {
      const float key = ::kvcompact::detail::bits_float(bits[e]);
      const bool present = at + e < count && (candidates == nullptr || candidates[at + e] != 0);
      const bool nan = present && isnan(key);
      if (nan && items.first_nan < 0) items.first_nan = at + e;
      if (present && !nan && key >= p.floor) items.eligible |= 1u << (4 * round + e);
      items.key[4 * round + e] = ordered_key(key);
    }
  }
  return items;
}

/// The scope, segment and first item of a tile, and the segment's item count.
struct top_k_tile {
  index_t scope, segment;  ///< where the tile lies
  int first, count;        ///< its first item; the segment's items
};

/// Tile @p tile (in scope order) of scope @p scope.
__device__ inline top_k_tile locate_top_k_tile(const top_k_problem& p, const top_k_workspace& w, unsigned scope, unsigned tile) {
  top_k_tile t;
  t.scope = scope;
  t.segment = static_cast<index_t>(scope) * p.segments_per_scope + tile / w.tiles_per_segment;
  t.first = static_cast<int>(tile % w.tiles_per_segment) * top_k_tile_items;
  const std::int32_t count = p.counts[t.segment];
  t.count = count < 0 ? 0 : (count > p.max_items ? static_cast<int>(p.max_items) : count);
  return t;
}

/// Records the first NaN key a block found (once per block).
__device__ inline void report_top_k_nan(const top_k_problem& p, const top_k_tile& t, int item, int* reported) {
  if (p.status == nullptr || atomicExch(reported, 1) != 0) return;
  const index_t heads = p.segment_heads, layers = p.segment_layers;
  const index_t slot = p.flag_index.data != nullptr ? p.flag_index.segment(t.segment)[item] : item;
  report(p.status, device_fault::nan_score, t.segment / (heads * layers), t.segment / heads % layers, t.segment % heads, slot);
}

/// The last block of a scope's digit pass: finds the digit of the k-th best key among the items
/// matching the prefix, narrows the scope's state, and clears the histogram for the next pass.
template <int Pass>
__device__ void decide_top_k_digit(const top_k_problem& p, top_k_scope_state& state, index_t scope) {
  constexpr int bins = 1 << top_k_digit_bits(Pass);
  constexpr int per_thread = bins / top_k_threads;
  using scan_t = cub::BlockScan<unsigned, top_k_threads>;
  __shared__ typename scan_t::TempStorage scan_storage;
  __shared__ unsigned chosen[3];  // digit, items above it, items in it
  const unsigned known = state.known_bits;
  const int shift = 32 - static_cast<int>(known) - top_k_digit_bits(Pass);
  unsigned counts[per_thread];  // this thread's digits, highest first
  unsigned local = 0;
  KVCOMPACT_UNROLL
  for (int i = 0; i < per_thread; ++i) {
    counts[i] = state.histogram[bins - 1 - static_cast<int>(threadIdx.x) * per_thread - i];
    local += counts[i];
  }
  unsigned above = 0, total = 0;
  scan_t(scan_storage).ExclusiveSum(local, above, total);
  KVCOMPACT_UNROLL
  for (int i = 0; i < per_thread; ++i) state.histogram[bins - 1 - static_cast<int>(threadIdx.x) * per_thread - i] = 0;
  unsigned remaining = state.remaining;
  if constexpr (Pass == 0) {
    if (p.kept != nullptr)
      for (index_t s = threadIdx.x; s < p.segments_per_scope; s += top_k_threads) p.kept[scope * p.segments_per_scope + s] = 0;
    const std::int32_t k = p.k[scope];
    if (k <= 0 || static_cast<unsigned>(k) >= total) {  // keep nothing, or every eligible item
      if (threadIdx.x == 0) {
        state.remaining = k <= 0 ? 0u : total;
        state.matching = total;
        state.decided = 1;
      }
      return;
    }
    remaining = static_cast<unsigned>(k);
  }
  unsigned running = above;
  KVCOMPACT_UNROLL
  for (int i = 0; i < per_thread; ++i) {
    if (running < remaining && running + counts[i] >= remaining) {
      chosen[0] = static_cast<unsigned>(bins - 1 - static_cast<int>(threadIdx.x) * per_thread - i);
      chosen[1] = running;
      chosen[2] = counts[i];
    }
    running += counts[i];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    state.prefix |= chosen[0] << shift;
    state.known_bits = known + top_k_digit_bits(Pass);
    state.remaining = remaining - chosen[1];
    state.matching = chosen[2];
    state.decided = state.remaining == state.matching || state.known_bits == 32;
  }
}

/// Grid (tiles of all scopes), one block per tile: digit pass @p Pass of the radix select. Counts
/// the digits of the tile's eligible keys that match the scope's prefix; the last block of the scope
/// decides the digit (decide_top_k_digit).
template <int Pass>
KVCOMPACT_KERNEL void __launch_bounds__(top_k_threads, top_k_min_blocks) top_k_digit_kernel(top_k_problem p, top_k_workspace w) {
  const unsigned scope = blockIdx.x / w.tiles_per_scope;
  top_k_scope_state& state = w.scopes[scope];
  if (state.decided) return;  // written by an earlier launch
  const unsigned prefix = state.prefix, known = state.known_bits;
  const int shift = 32 - static_cast<int>(known) - top_k_digit_bits(Pass);
  const unsigned digit_mask = (1u << top_k_digit_bits(Pass)) - 1u;
  __shared__ unsigned histogram[top_k_bins];
  __shared__ int nan_reported;
  __shared__ bool last;
  for (int b = static_cast<int>(threadIdx.x); b < top_k_bins; b += top_k_threads) histogram[b] = 0;
  if (threadIdx.x == 0) nan_reported = 0;
  const top_k_tile t = locate_top_k_tile(p, w, scope, blockIdx.x % w.tiles_per_scope);
  const top_k_thread_items items = load_top_k_items(p, t.segment, t.first, t.count);
  __syncthreads();
  if (Pass == 0 && items.first_nan >= 0) report_top_k_nan(p, t, items.first_nan, &nan_reported);
  const int lane = static_cast<int>(threadIdx.x % 32);
  KVCOMPACT_UNROLL
  for (int i = 0; i < top_k_items_per_thread; ++i) {
    // Keys cluster: lanes with the same digit add once (warp-aggregated), not one by one.
    const bool counted = ((items.eligible >> i) & 1u) != 0 && top_bits_equal(items.key[i], prefix, known);
    const unsigned digit = counted ? (items.key[i] >> shift) & digit_mask : 0xffffffffu;
    const unsigned same = __match_any_sync(0xffffffffu, digit);
    if (counted && lane == __ffs(static_cast<int>(same)) - 1) atomicAdd(&histogram[digit], static_cast<unsigned>(__popc(same)));
  }
  __syncthreads();
  for (int b = static_cast<int>(threadIdx.x); b < top_k_bins; b += top_k_threads)
    if (histogram[b] != 0) atomicAdd(&state.histogram[b], histogram[b]);
  __syncthreads();  // every thread's additions precede the arrival
  if (threadIdx.x == 0) last = fetch_add_acq_rel(&state.arrivals[Pass], 1u) == w.tiles_per_scope - 1;
  __syncthreads();
  if (last) decide_top_k_digit<Pass>(p, state, scope);
}

/// Grid (tiles of all scopes), one block per tile: flags the kept items and counts them per
/// segment. Ties at the threshold that do not all fit are ranked by (segment, item) across the
/// scope's tiles: tiles are taken by ticket and a decoupled look-back gives each its ties' offset.
KVCOMPACT_KERNEL void __launch_bounds__(top_k_threads, top_k_min_blocks) top_k_mark_kernel(top_k_problem p, top_k_workspace w) {
  const unsigned scope = blockIdx.x / w.tiles_per_scope;
  top_k_scope_state& state = w.scopes[scope];
  const unsigned prefix = state.prefix, known = state.known_bits, remaining = state.remaining;
  if (remaining == 0) return;
  const bool ranked = remaining < state.matching;  // exact ties at the threshold, not all kept
  using scan_t = cub::BlockScan<unsigned, top_k_threads>;
  using reduce_t = cub::BlockReduce<unsigned, top_k_threads>;
  __shared__ typename scan_t::TempStorage scan_storage;
  __shared__ typename reduce_t::TempStorage reduce_storage;
  __shared__ unsigned ticket, ties_before;
  unsigned tile = blockIdx.x % w.tiles_per_scope;
  if (ranked) {
    if (threadIdx.x == 0) ticket = atomicAdd(&state.tile_claims, 1u);
    __syncthreads();
    tile = ticket;
  }
  const top_k_tile t = locate_top_k_tile(p, w, scope, tile);
  const top_k_thread_items items = load_top_k_items(p, t.segment, t.first, t.count);
  unsigned keep = 0, tie = 0;
  KVCOMPACT_UNROLL
  for (int i = 0; i < top_k_items_per_thread; ++i) {
    if (((items.eligible >> i) & 1u) == 0) continue;
    if (top_bits_above(items.key[i], prefix, known)) keep |= 1u << i;
    else if (top_bits_equal(items.key[i], prefix, known)) (ranked ? tie : keep) |= 1u << i;
  }
  if (ranked) {
    // Ties in item order: round 0 of every thread, then round 1; counts packed 16 bits per round.
    const unsigned packed = static_cast<unsigned>(__popc(static_cast<int>(tie & 0xfu))) | (static_cast<unsigned>(__popc(static_cast<int>(tie >> 4))) << 16);
    unsigned before = 0, total = 0;
    scan_t(scan_storage).ExclusiveSum(packed, before, total);
    tile_status* statuses = w.statuses + static_cast<index_t>(scope) * w.tiles_per_scope;
    const unsigned tile_ties = (total & 0xffffu) + (total >> 16);
    if (tile == 0) {
      if (threadIdx.x == 0) {
        ties_before = 0;
        publish_tile(statuses, tile_prefix_ready, tile_ties);
      }
    } else {
      if (threadIdx.x == 0) publish_tile(statuses + tile, tile_count_ready, tile_ties);
      if (threadIdx.x < 32) {
        const unsigned exclusive = look_back(statuses, tile, 0);
        if (threadIdx.x == 0) {
          ties_before = exclusive;
          publish_tile(statuses + tile, tile_prefix_ready, exclusive + tile_ties);
        }
      }
    }
    __syncthreads();
    unsigned rank[2] = {ties_before + (before & 0xffffu), ties_before + (total & 0xffffu) + (before >> 16)};
    KVCOMPACT_UNROLL
    for (int i = 0; i < top_k_items_per_thread; ++i)
      if (((tie >> i) & 1u) != 0 && rank[i / 4]++ < remaining) keep |= 1u << i;
  }
  if (p.flags.data != nullptr && keep != 0) {
    std::uint8_t* flags = p.flags.segment(t.segment);
    const std::int32_t* where = p.flag_index.data != nullptr ? p.flag_index.segment(t.segment) : nullptr;
    KVCOMPACT_UNROLL
    for (int i = 0; i < top_k_items_per_thread; ++i) {
      const int item = top_k_item_index(t.first, i);
      if (((keep >> i) & 1u) != 0) flags[where != nullptr ? where[item] : item] = 1;
    }
  }
  if (p.kept != nullptr) {
    const unsigned kept = reduce_t(reduce_storage).Sum(static_cast<unsigned>(__popc(static_cast<int>(keep))));
    if (threadIdx.x == 0 && kept != 0) atomicAdd(p.kept + t.segment, static_cast<std::int32_t>(kept));
  }
}

/// @brief Flags the top k items of every scope of @p problem (see top_k_problem for the ranking),
/// asynchronously on @p stream: one memset and four launches of one block per 2,048 items.
/// Segments of a scope are consecutive; `flags` receives 1 at each kept item (nothing else is
/// written there); `kept` receives per-segment counts (for Ada-KV's per-head allocation). NaN keys
/// are reported to `status` and never kept.
/// @param problem the request (device pointers)
/// @param workspace top_k_workspace_bytes() bytes of device memory, 16-byte aligned (contents ignored)
/// @param stream the stream
/// @param where name used in error messages
/// @throws kvcompact::error naming a bad argument
inline void launch_top_k(const top_k_problem& problem, std::span<std::byte> workspace, cudaStream_t stream, const char* where = "launch_top_k") {
  using ::kvcompact::detail::require;
  require(problem.keys.data != nullptr, where, "keys", "null pointer");
  require(problem.counts != nullptr, where, "counts", "null pointer");
  require(problem.k != nullptr, where, "k", "null pointer");
  require(problem.segments > 0, where, "segments", "must be positive");
  require(problem.segments_per_scope > 0 && problem.segments % problem.segments_per_scope == 0, where, "segments_per_scope",
          "must be positive and divide the segments");
  require(problem.max_items >= 0 && problem.max_items <= index_t{1} << 30, where, "max_items", "must be in [0, 2^30]");
  require(problem.keys.stride >= problem.max_items, where, "keys.stride", "is below max_items");
  require(problem.candidates.data == nullptr || problem.candidates.stride >= problem.max_items, where, "candidates.stride", "is below max_items");
  require(problem.flag_index.data == nullptr || problem.flag_index.stride >= problem.max_items, where, "flag_index.stride", "is below max_items");
  require(problem.flags.data != nullptr || problem.flag_index.data == nullptr, where, "flag_index", "given without flags");
  require(problem.segment_layers > 0 && problem.segment_heads > 0, where, "segment_layers", "segment naming must be positive");
  const std::size_t bytes = top_k_workspace_bytes(problem.segments, problem.segments_per_scope, problem.max_items);
  require(workspace.size() >= bytes, where, "workspace",
          [&] { return "has " + std::to_string(workspace.size()) + " bytes, top_k_workspace_bytes() asks for " + std::to_string(bytes); });
  require(workspace.data() != nullptr && reinterpret_cast<std::uintptr_t>(workspace.data()) % 16 == 0, where, "workspace", "null or not 16-byte aligned");
  const index_t tiles_per_segment = top_k_tiles_per_segment(problem.max_items);
  const index_t blocks = problem.segments * tiles_per_segment;
  require(blocks < (index_t{1} << 31), where, "segments", "too many tiles for one grid");
  const index_t scopes = problem.segments / problem.segments_per_scope;
  top_k_workspace w{reinterpret_cast<top_k_scope_state*>(workspace.data()),
                    reinterpret_cast<tile_status*>(workspace.data() + (static_cast<std::size_t>(scopes) * sizeof(top_k_scope_state) + 255) / 256 * 256),
                    static_cast<unsigned>(tiles_per_segment), static_cast<unsigned>(tiles_per_segment * problem.segments_per_scope)};
  check(cudaMemsetAsync(workspace.data(), 0, bytes, stream), where, "cudaMemsetAsync(top-k workspace)");
  const dim3 grid(static_cast<unsigned>(blocks));
  launch(&top_k_digit_kernel<0>, grid, top_k_threads, 0, stream, problem, w);
  check_launch(where, "top_k_digit_kernel<0>");
  launch(&top_k_digit_kernel<1>, grid, top_k_threads, 0, stream, problem, w);
  check_launch(where, "top_k_digit_kernel<1>");
  launch(&top_k_digit_kernel<2>, grid, top_k_threads, 0, stream, problem, w);
  check_launch(where, "top_k_digit_kernel<2>");
  launch(&top_k_mark_kernel, grid, top_k_threads, 0, stream, problem, w);
  check_launch(where, "top_k_mark_kernel");
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
