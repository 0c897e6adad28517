// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief In-place compaction of the cache after prefill selection, over many blocks per head: the
/// kept slots of every head move to the front in slot order, K and V bit-identical, with their
/// positions; every kept slot gets the scorer's prefill decode state; lengths and decode budgets are
/// set.
///
/// Each block takes one tile of slots by ticket (tiles of a head in increasing order). It counts its
/// kept slots, stages their K and V rows in registers (16-byte chunks: one vector access when the
/// layout's row is contiguous and aligned, else element by element), publishes its count, and learns
/// where its rows go from a decoupled look-back (look_back.cuh). In place this is safe because a
/// row never moves up (its destination is at most its slot) and a tile publishes its count only
/// after reading its rows: once a tile's look-back is through, every lower tile has read what it
/// moves, so its destinations (all below its own slots) hold nothing still to be read. A tile whose
/// slots are all kept publishes its count before reading (its rows move only when a lower tile
/// dropped a slot; otherwise they stay and nothing is read); a tile that needs such rows moved
/// waits for them (look_back's "rows unread" rule). Whole tiles that stay in place are neither read
/// nor written (in the tile of a head's first drop, rows before it are read, not written); the data
/// moved is the kept rows that move, once each way.
#pragma once

#include <kvcompact/cuda/detail/cub.cuh>
#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/look_back.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of the compaction kernel.
inline constexpr int compaction_threads = 256;
/// 16-byte chunks of K and V a thread stages in registers.
inline constexpr int compaction_stage_chunks = 8;
/// Blocks per SM the compaction kernel is built for (64 registers per thread: the 32 of the staged
/// chunks, 128 KiB of rows in flight per SM).
inline constexpr int compaction_min_blocks = 4;

/// 16-byte chunks of one K (or V) row. @param head_dim elements per row @param element_bytes bytes per element
inline index_t compaction_row_chunks(index_t head_dim, std::size_t element_bytes) {
  return (head_dim * static_cast<index_t>(element_bytes) + 15) / 16;
}

/// Slots per compaction tile: as many K and V row pairs as a block stages, at most one per thread;
/// 0 when one row pair is more than a block stages. @param head_dim elements per row
/// @param element_bytes bytes per element @return the tile's slots
inline index_t compaction_tile_slots(index_t head_dim, std::size_t element_bytes) {
  const index_t fit = index_t{compaction_threads} * compaction_stage_chunks / (2 * compaction_row_chunks(head_dim, element_bytes));
  return fit > compaction_threads ? index_t{compaction_threads} : fit;
}

/// Bytes of compaction scratch: the ticket counter and one status word per tile.
/// @param heads (sequence, layer, KV head) triples @param capacity slots per head @param tile_slots slots per tile
/// @return the size in bytes
inline std::size_t compaction_workspace_bytes(index_t heads, index_t capacity, index_t tile_slots) {
  const index_t tiles = heads * ((capacity + tile_slots - 1) / tile_slots);
  return 256 + (static_cast<std::size_t>(tiles) * sizeof(tile_status) + 255) / 256 * 256;
}

/// The tiling of a compaction launch and its scratch.
struct compaction_plan {
  unsigned tile_slots;      ///< slots per tile
  unsigned tiles_per_head;  ///< tiles per head (capacity / tile_slots, rounded up)
  unsigned row_chunks;      ///< 16-byte chunks per K (or V) row
  unsigned* tickets;        ///< tiles handed out so far
  tile_status* statuses;    ///< [heads][tiles_per_head] look-back words
};

/// One 16-byte chunk of a row (elements past the row's end are zero): one vector load when
/// @p vector, else element by element with the layout's dimension stride.
template <class T>
__device__ inline uint4 load_row_chunk(const T* row, unsigned chunk, bool vector, int dims, index_t dim_stride) {
  if (vector) return reinterpret_cast<const uint4*>(row)[chunk];
  constexpr int per_chunk = 16 / static_cast<int>(sizeof(T));
  uint4 out{0u, 0u, 0u, 0u};
  KVCOMPACT_UNROLL
  for (int e = 0; e < per_chunk; ++e) {
    const int d = static_cast<int>(chunk) * per_chunk + e;
    if (d < dims) {
      const T element = row[d * dim_stride];  // one access of the element's width
      memcpy(reinterpret_cast<unsigned char*>(&out) + e * sizeof(T), &element, sizeof(T));
    }
  }
  return out;
}

/// Stores one 16-byte chunk of a row (elements past the row's end are left out), the counterpart of
/// load_row_chunk().
template <class T>
__device__ inline void store_row_chunk(T* row, unsigned chunk, bool vector, int dims, index_t dim_stride, const uint4& value) {
  if (vector) {
    reinterpret_cast<uint4*>(row)[chunk] = value;
    return;
  }
  constexpr int per_chunk = 16 / static_cast<int>(sizeof(T));
  KVCOMPACT_UNROLL
  for (int e = 0; e < per_chunk; ++e) {
    const int d = static_cast<int>(chunk) * per_chunk + e;
    if (d < dims) {
      T element;
      memcpy(&element, reinterpret_cast<const unsigned char*>(&value) + e * sizeof(T), sizeof(T));
      row[d * dim_stride] = element;  // one access of the element's width
    }
  }
}

/// Whether the K and V rows at element @p offset take 16-byte vector accesses: contiguous, a whole
/// number of chunks, 16-byte aligned.
template <class T, class Layout>
__device__ inline bool vector_row(const kv_cache<T, Layout>& cache, index_t offset) {
  const bool whole = cache.layout.dim_stride() == 1 && (cache.layout.head_dim() * static_cast<index_t>(sizeof(T))) % 16 == 0;
  return whole && reinterpret_cast<std::uintptr_t>(cache.keys + offset) % 16 == 0 && reinterpret_cast<std::uintptr_t>(cache.values + offset) % 16 == 0;
}

/// Rows of one tile as the block moves them: element offsets and access width per kept rank.
struct compaction_rows {
  index_t source[compaction_threads];       ///< row of the kept slot of each rank; -1: not copied
  index_t destination[compaction_threads];  ///< where it goes; -1: not written (in place, or unmapped)
  std::uint8_t vector[compaction_threads];  ///< bit 0: source takes 16-byte accesses; bit 1: destination
};

/// Chunk @p e of a tile's staged rows: which kept rank, K or V, which chunk of the row.
struct staged_chunk {
  unsigned rank, chunk;  ///< kept rank within the tile; chunk within the row
  bool value;            ///< V (else K)
};

/// Maps chunk @p e (K rows' chunks, then V's, rank after rank) to its row. @param e chunk index
/// @param row_chunks chunks per K (or V) row
__device__ inline staged_chunk locate_chunk(unsigned e, unsigned row_chunks) {
  const unsigned rank = e / (2 * row_chunks), within = e - rank * 2 * row_chunks;
  const bool value = within >= row_chunks;
  return {rank, value ? within - row_chunks : within, value};
}

/// Calls `visit(v, chunk)` for each chunk of the tile's @p count kept rows this thread stages:
/// chunk e of the tile is element `e / compaction_threads` of thread `e % compaction_threads`.
template <class Visit>
__device__ inline void for_each_staged_chunk(const compaction_plan& plan, int count, const Visit& visit) {
  const unsigned total = static_cast<unsigned>(count) * 2 * plan.row_chunks;
  KVCOMPACT_UNROLL
  for (int v = 0; v < compaction_stage_chunks; ++v) {
    const unsigned e = threadIdx.x + static_cast<unsigned>(v * compaction_threads);
    if (e < total) visit(v, locate_chunk(e, plan.row_chunks));
  }
}

/// Reads the K and V rows of the tile's @p count kept slots into @p staged.
template <class T, class Layout>
__device__ inline void stage_rows(const kv_cache<T, Layout>& cache, const compaction_plan& plan, int count, const compaction_rows& rows,
                                  uint4 (&staged)[compaction_stage_chunks]) {
  const int dims = static_cast<int>(cache.layout.head_dim());
  const index_t dim_stride = cache.layout.dim_stride();
  for_each_staged_chunk(plan, count, [&](int v, const staged_chunk& c) {
    const index_t offset = rows.source[c.rank];
    if (offset >= 0) staged[v] = load_row_chunk((c.value ? cache.values : cache.keys) + offset, c.chunk, (rows.vector[c.rank] & 1) != 0, dims, dim_stride);
  });
}

/// Writes the staged rows to their destinations (rows whose destination is -1 stay as they are).
template <class T, class Layout>
__device__ inline void write_rows(const kv_cache<T, Layout>& cache, const compaction_plan& plan, int count, const compaction_rows& rows,
                                  const uint4 (&staged)[compaction_stage_chunks]) {
  const int dims = static_cast<int>(cache.layout.head_dim());
  const index_t dim_stride = cache.layout.dim_stride();
  for_each_staged_chunk(plan, count, [&](int v, const staged_chunk& c) {
    const index_t offset = rows.destination[c.rank];
    if (offset >= 0) store_row_chunk((c.value ? cache.values : cache.keys) + offset, c.chunk, (rows.vector[c.rank] & 2) != 0, dims, dim_stride, staged[v]);
  });
}

/// Grid (tiles of every head), one tile per block, taken by ticket: moves the tile's kept slots
/// (K, V, position) to their place in the head, writes their prefill decode state, and, from the
/// head's first and last tiles, the decode budget and the new length. Heads of faulted layers are
/// left as they are.
template <class Policy, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(compaction_threads, compaction_min_blocks)
    compact_kernel(prefill_problem<T, Layout, State> p, Policy policy, compaction_plan plan) {
  using scan_t = cub::BlockScan<int, compaction_threads>;
  __shared__ typename scan_t::TempStorage scan_storage;
  __shared__ compaction_rows rows;
  __shared__ unsigned ticket, kept_before_tile;
  if (threadIdx.x == 0) ticket = atomicAdd(plan.tickets, 1u);
  __syncthreads();
  const unsigned head_linear = ticket / plan.tiles_per_head, tile = ticket % plan.tiles_per_head;
  const Layout& layout = p.cache.layout;
  const index_t layers = p.layers(), kv_heads = layout.num_kv_heads();
  const index_t h = head_linear % kv_heads, s = p.grid_sequence(head_linear / kv_heads), l = p.grid_layer(head_linear / kv_heads);
  if (p.layer_faults[s * layers + l]) return;
  const index_t head = p.cache.head_index(s, l, h), base = p.head_base(s, l, h);
  // The head's last tile writes the new length while tiles past the end may still read the old one
  // (either value ends them: both are at most their first slot); every tile below the last one read
  // it before the last tile's look-back could finish. Hence relaxed atomics, not plain accesses.
  const std::int32_t n = load_relaxed(p.cache.lengths + head);
  const int first = static_cast<int>(tile * plan.tile_slots);
  // A bad length (below 0, above the layer's own capacity) was reported when the layer was scored.
  if (n < 0 || n > ::kvcompact::detail::layer_capacity(layout, l) || (tile > 0 && first >= n)) return;
  const int slots = n - first < static_cast<int>(plan.tile_slots) ? n - first : static_cast<int>(plan.tile_slots);
  const int slot = first + static_cast<int>(threadIdx.x);
  const bool kept = static_cast<int>(threadIdx.x) < slots && p.keep[base + slot] != 0;
  int rank = 0, count = 0;
  scan_t(scan_storage).ExclusiveSum(kept ? 1 : 0, rank, count);
  std::int32_t position = 0;
  State state{};
  if (kept) {
    position = p.cache.positions[base + slot];
    state = policy.scorer.state_from_prefill(p.scores[base + slot], position, p.step[s * layers + l]);
    const index_t offset = checked_offset(layout, s, l, h, slot, p.status);
    rows.source[rank] = offset;
    rows.vector[rank] = offset >= 0 && vector_row(p.cache, offset) ? 1 : 0;
  }
  __syncthreads();
  const bool full = count == slots;  // nothing dropped: rows move only if a lower tile dropped a slot
  uint4 staged[compaction_stage_chunks];
  if (!full) stage_rows(p.cache, plan, count, rows, staged);
  __syncthreads();  // the block's reads precede its status
  tile_status* statuses = plan.statuses + static_cast<index_t>(head_linear) * plan.tiles_per_head;
  if (tile == 0) {
    if (threadIdx.x == 0) kept_before_tile = 0;
  } else {
    if (threadIdx.x == 0) publish_tile(statuses + tile, tile_count_ready | (full ? tile_rows_unread : 0), static_cast<unsigned>(count));
    if (threadIdx.x < 32) {
      const unsigned exclusive = look_back(statuses, tile, plan.tile_slots);
      if (threadIdx.x == 0) kept_before_tile = exclusive;
    }
  }
  __syncthreads();
  const int kept_before = static_cast<int>(kept_before_tile);
  if (full && kept_before < first) {  // every row moves: read them now
    stage_rows(p.cache, plan, count, rows, staged);
    __syncthreads();
  }
  if (threadIdx.x == 0) publish_tile(statuses + tile, tile_prefix_ready, static_cast<unsigned>(kept_before + count));
  if (kept) {
    const int to = kept_before + rank;
    index_t offset = -1;
    if (to != slot) {
      p.cache.positions[base + to] = position;
      if (rows.source[rank] >= 0) offset = checked_offset(layout, s, l, h, to, p.status);
      if (offset >= 0 && vector_row(p.cache, offset)) rows.vector[rank] |= 2;
    }
    rows.destination[rank] = offset;
    p.states[base + to] = state;
  }
  __syncthreads();
  write_rows(p.cache, plan, count, rows, staged);
  if (threadIdx.x == 0) {
    if (tile == 0) p.budgets[head] = static_cast<std::int32_t>(policy.selector.budget(l, layers, n));
    if (first + slots == n) store_relaxed(p.cache.lengths + head, static_cast<std::int32_t>(kept_before + count));
  }
}

/// @brief Compacts every head of the problem's layers (compact_kernel), asynchronously on @p stream: one memset
/// of the scratch and one launch.
/// @param p the prefill arrays (keep flags, scores, step, faults, states, budgets)
/// @param policy the policy (prefill decode state, budgets)
/// @param scratch compaction_workspace_bytes() bytes of device memory, 256-byte aligned (contents ignored)
/// @param stream the stream @param where name used in error messages
/// @throws kvcompact::error when a head's rows are too long for a block to stage
template <class Policy, class T, class Layout, class State>
void launch_compaction(const prefill_problem<T, Layout, State>& p, const Policy& policy, std::span<std::byte> scratch, cudaStream_t stream,
                       const char* where) {
  const Layout& layout = p.cache.layout;
  const index_t tile_slots = compaction_tile_slots(layout.head_dim(), sizeof(T));
  ::kvcompact::detail::require(tile_slots > 0, where, "cache.layout", [&] {
    return "head_dim " + std::to_string(layout.head_dim()) + " makes K and V rows longer than a compaction block stages (" +
           std::to_string(compaction_threads * compaction_stage_chunks * 16) + " bytes)";
  });
  const index_t heads = layout.num_sequences() * p.grid_layers * layout.num_kv_heads();  // the heads of this call's layers
  const index_t tiles_per_head = (layout.capacity() + tile_slots - 1) / tile_slots;
  const std::size_t bytes = compaction_workspace_bytes(heads, layout.capacity(), tile_slots);
  ::kvcompact::detail::require(scratch.size() >= bytes && heads * tiles_per_head < (index_t{1} << 31), where, "workspace",
                               "too small for the compaction scratch, or too many tiles for one grid");
  const compaction_plan plan{static_cast<unsigned>(tile_slots), static_cast<unsigned>(tiles_per_head),
                             static_cast<unsigned>(compaction_row_chunks(layout.head_dim(), sizeof(T))), reinterpret_cast<unsigned*>(scratch.data()),
                             reinterpret_cast<tile_status*>(scratch.data() + 256)};
  check(cudaMemsetAsync(scratch.data(), 0, bytes, stream), where, "cudaMemsetAsync(compaction scratch)");
  launch(&compact_kernel<Policy, T, Layout, State>, dim3(static_cast<unsigned>(heads * tiles_per_head)), compaction_threads, 0, stream, p,
         policy, plan);
  check_launch(where, "compact_kernel");
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
