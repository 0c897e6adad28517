// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Decoupled look-back (Merrill and Garland, "Single-pass Parallel Prefix Scan with Decoupled
/// Look-back", 2016): the exclusive prefix sum of per-tile counts across the blocks of one launch in
/// a single pass. Each tile publishes its own count as soon as it has it, then reads its
/// predecessors' words from the nearest one downwards until one holds an inclusive prefix, and
/// publishes its own inclusive prefix. Tiles must be claimed in increasing order (an atomic ticket),
/// so a tile only ever waits for tiles whose blocks already run: the scheme makes progress however
/// many blocks are resident.
///
/// In-place compaction adds one rule (see compaction.cuh): a tile's count may be published before
/// the tile has read its rows ("rows unread"). Such a tile's rows move only if some lower tile
/// dropped a slot; a looking-back tile then also waits until that tile's inclusive prefix is out,
/// which the tile publishes only after its reads. Tiles that never publish "rows unread" (the top-k
/// tie ranking) never wait for that.
#pragma once

#include <kvcompact/cuda/detail/cub.cuh>
#include <kvcompact/cuda/detail/grid_sync.cuh>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Status word of a tile: its value in bits 0-31, flags above; 0 means "nothing published yet".
using tile_status = unsigned long long;
/// The value is the tile's own count.
inline constexpr tile_status tile_count_ready = 1ull << 32;
/// The value is the inclusive prefix: the counts of this tile and of every tile before it.
inline constexpr tile_status tile_prefix_ready = 1ull << 33;
/// Compaction: published before the tile read its rows (cleared by its inclusive prefix).
inline constexpr tile_status tile_rows_unread = 1ull << 34;

/// Publishes a tile's status (thread 0 of the tile's block, after a `__syncthreads()` that follows
/// everything the status vouches for). @param status the tile's word @param flags tile_count_ready
/// or tile_prefix_ready, with tile_rows_unread @param value count or inclusive prefix
__device__ inline void publish_tile(tile_status* status, tile_status flags, unsigned value) { store_release(status, flags | value); }

/// The exclusive prefix of tile @p tile (> 0): the sum of the values tiles [0, tile) publish. Called
/// by the 32 lanes of one warp (uniformly); the result is valid in lane 0. Waits for every tile it
/// reads to publish; and when a tile published tile_rows_unread and some lower tile dropped a slot
/// (a count below @p full_count, or an inclusive prefix below the slots up to it), waits until that
/// tile's inclusive prefix is out.
/// @param statuses the words of the tiles of one sequence of tiles
/// @param tile this tile's index
/// @param full_count a tile's count when it dropped nothing (0: counts are not slot counts)
__device__ inline unsigned look_back(const tile_status* statuses, unsigned tile, unsigned full_count) {
  using warp_sum = cub::WarpReduce<unsigned>;
  __shared__ typename warp_sum::TempStorage sum_storage;
  const int lane = static_cast<int>(threadIdx.x % 32);
  unsigned exclusive = 0;
  bool unread_seen = false;
  int first_drop = static_cast<int>(tile);  // lowest tile seen that dropped a slot (or whose prefix did)
  int bottom = -1;                          // the tile whose inclusive prefix ended the walk
  for (int top = static_cast<int>(tile) - 1;; top -= 32) {
    const int w = top - lane;
    tile_status status = tile_prefix_ready;  // before tile 0: an inclusive prefix of 0
    if (w >= 0)
      do status = load_acquire(statuses + w);
      while ((status & (tile_count_ready | tile_prefix_ready)) == 0);
    const unsigned inclusive_lanes = __ballot_sync(0xffffffffu, (status & tile_prefix_ready) != 0);
    const int stop = inclusive_lanes != 0 ? __ffs(static_cast<int>(inclusive_lanes)) - 1 : 32;  // nearest inclusive prefix
    const unsigned value = lane <= stop ? static_cast<unsigned>(status) : 0u;
    const unsigned sum = warp_sum(sum_storage).Sum(value);
    if (lane == 0) exclusive += sum;
    const bool dropped = lane < stop ? value < full_count
                                     : lane == stop && w >= 0 && value < static_cast<unsigned long long>(w + 1) * full_count;
    const unsigned drops = __ballot_sync(0xffffffffu, dropped);
    if (drops != 0) {
      const int lowest = top - (31 - __clz(static_cast<int>(drops)));  // the highest lane is the lowest tile
      first_drop = lowest < first_drop ? lowest : first_drop;
    }
    unread_seen |= __ballot_sync(0xffffffffu, lane < stop && (status & tile_rows_unread) != 0) != 0;
    __syncwarp();  // sum_storage may be reused
    if (stop < 32) {
      bottom = top - stop;
      break;
    }
  }
  if (unread_seen) {  // tiles above the lowest drop move their rows: wait until they have read them
    const int floor = first_drop > bottom ? first_drop : bottom;
    for (int top = static_cast<int>(tile) - 1; top > floor; top -= 32) {
      const int w = top - lane;
      if (w > floor)
        while ((load_acquire(statuses + w) & tile_rows_unread) != 0) {
        }
    }
    __syncwarp();
  }
  return exclusive;
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
