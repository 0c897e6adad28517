// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Compaction on the CPU backend: moving runs of slots of one head toward the front with one
/// block copy per run of K/V rows that lie back to back in storage, instead of one element at a time.
#pragma once

#include <kvcompact/detail/slot_ops.hpp>
#include <kvcompact/kv_cache.hpp>

#include <cstdint>
#include <cstring>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// How many of the @p count slots from @p from and from @p to (both ascending) have their K/V rows
/// back to back in storage on both sides, starting at the first pair: 0 when the rows are strided
/// (dim_stride() != 1) or a slot does not map into storage, else at least 1.
template <class T, class Layout>
index_t contiguous_rows(const kv_cache<T, Layout>& cache, index_t sequence, index_t layer, index_t head, index_t from, index_t to, index_t count) {
  const Layout& layout = cache.layout;
  if (layout.dim_stride() != 1) return 0;
  const index_t row = layout.head_dim(), src = layout.offset(sequence, layer, head, from), dst = layout.offset(sequence, layer, head, to);
  index_t rows = 0;
  for (; rows < count; ++rows) {
    if (!slot_in_range(layout, sequence, from + rows) || !slot_in_range(layout, sequence, to + rows)) break;
    if (layout.offset(sequence, layer, head, from + rows) != src + rows * row || layout.offset(sequence, layer, head, to + rows) != dst + rows * row)
      break;
  }
  return rows;
}

/// Longest copy that copy_down() runs in 64-byte chunks; longer ones are a memmove.
inline constexpr std::size_t copy_down_chunked_bytes = 4096;

/// Copies @p bytes from @p source to @p target, ranges that do not overlap or overlap with @p target
/// below @p source (memmove's result in both cases). Up to copy_down_chunked_bytes: 64-byte chunks in
/// ascending order, each read whole before it is written (with @p target below @p source a chunk
/// written never covers bytes not yet read), then the remainder by memmove; longer: a memmove. For
/// compaction's short runs (a few 512-byte rows whose lines are still arriving from memory) the chunks
/// were ~1.4x faster than a memmove call per run (the kept quarter of 8 heads x 16k rows of K and V,
/// 2026-12-02, 2-vCPU EPYC: 6.6-6.9 -> 4.4-4.8 ms); a long run (StreamingLLM's recent window) streams
/// faster through memmove (chunks for every run: StreamingLLM at 16k tokens 1.16x the time).
inline void copy_down(void* target, const void* source, std::size_t bytes) {
  if (bytes > copy_down_chunked_bytes) {
    std::memmove(target, source, bytes);
    return;
  }
  constexpr std::size_t chunk = 64;
  auto* to = static_cast<unsigned char*>(target);
  const auto* from = static_cast<const unsigned char*>(source);
  std::size_t done = 0;
  for (; done + chunk <= bytes; done += chunk) {
    unsigned char staged[chunk];
    std::memcpy(staged, from + done, chunk);
    std::memcpy(to + done, staged, chunk);
  }
  if (done < bytes) std::memmove(to + done, from + done, bytes - done);
}

/// Moves @p count slots of one head from slot @p from to slot @p to (to < from): K and V bit-identically,
/// positions and decode states, with the result of kvcompact::detail::move_slot for each slot in
/// ascending order, but one copy_down() of K and one of V per run of rows back to back in storage.
template <class T, class Layout, class State>
void move_slots(const kv_cache<T, Layout>& cache, State* states, index_t sequence, index_t layer, index_t head, index_t from, index_t to,
                index_t count) {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_copyable_v<State>, "kvcompact: detail::move_slots copies bytewise");
  const index_t first = cache.slot_index(sequence, layer, head, 0), row = cache.layout.head_dim();
  for (index_t moved = 0; moved < count;) {
    const index_t from_slot = from + moved, to_slot = to + moved;
    const index_t rows = contiguous_rows(cache, sequence, layer, head, from_slot, to_slot, count - moved);
    if (rows == 0) {  // strided rows or a slot outside storage: the element-wise move
      move_slot(cache, states, sequence, layer, head, from_slot, to_slot);
      ++moved;
      continue;
    }
    const index_t src = cache.layout.offset(sequence, layer, head, from_slot), dst = cache.layout.offset(sequence, layer, head, to_slot);
    const std::size_t bytes = static_cast<std::size_t>(rows) * static_cast<std::size_t>(row) * sizeof(T);
    // Overlapping runs have dst < src (slot `to` < `from`, rows back to back on both sides).
    copy_down(cache.keys + dst, cache.keys + src, bytes);
    copy_down(cache.values + dst, cache.values + src, bytes);
    for (index_t i = 0; i < rows; ++i) {  // a few entries per run (a call per run cost as much as the rows)
      cache.positions[first + to_slot + i] = cache.positions[first + from_slot + i];
      states[first + to_slot + i] = states[first + from_slot + i];
    }
    moved += rows;
  }
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
