// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The selection context both backends hand to selectors and mergers: one sequence and
/// storage layer of a cache, with the scratch space they work in (host and device code).
#pragma once

#include <kvcompact/kv_cache.hpp>
#include <kvcompact/tensor_parallel.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Scratch arrays of one layer context, carved from caller-provided workspace.
struct layer_scratch {
  float* scores;              ///< [kv_heads][capacity] slot scores
  float* query_scores;        ///< [query_heads][capacity] row-reduced scores per query head
  float* floats;              ///< [kv_heads][capacity] selector scratch
  std::int32_t* indices;      ///< [kv_heads][2][capacity] selector scratch
  std::int32_t* order;        ///< [kv_heads][capacity] slots in position order
  std::uint8_t* order_ready;  ///< [kv_heads] whether order is computed (clear it whenever slots moved)
  std::uint8_t* keep;         ///< [kv_heads][capacity] keep flags
  std::int32_t* targets;      ///< [kv_heads][capacity] merge targets
  std::int32_t* shared;       ///< [capacity + 2] store shared across the layers of one sequence
  std::int32_t* budgets;      ///< [kv_heads] decode budgets of this layer's heads
};

/// @brief Implements the selection context (kvcompact::detail::probe_selection_context) over a kv_cache.
/// @tparam T storage element @tparam Layout the cache layout
template <class T, class Layout>
class layer_context {
 public:
  /// @brief Binds one sequence and storage layer. `scratch.order_ready` is taken as it is: clear it
  /// whenever slots moved since the order was computed.
  /// @param cache the cache @param scratch workspace arrays @param sequence sequence @param layer storage layer
  /// @param query_heads query heads @param step newest position
  KVCOMPACT_HOST_DEVICE layer_context(const kv_cache<T, Layout>& cache, const layer_scratch& scratch, index_t sequence, index_t layer, index_t query_heads,
                index_t step)
      : cache_(cache), scratch_(scratch), sequence_(sequence), layer_(layer), query_heads_(query_heads), step_(step) {}

  /// @brief KV heads. @return the count
  KVCOMPACT_HOST_DEVICE int kv_heads() const { return static_cast<int>(cache_.layout.num_kv_heads()); }
  /// @brief Query heads. @return the count
  KVCOMPACT_HOST_DEVICE int query_heads() const { return static_cast<int>(query_heads_); }
  /// @brief Storage layer. @return the layer
  KVCOMPACT_HOST_DEVICE int layer() const { return static_cast<int>(layer_); }
  /// @brief Storage layers. @return the count
  KVCOMPACT_HOST_DEVICE int num_layers() const { return static_cast<int>(cache_.layout.num_layers()); }
  /// @brief Sequence. @return the index
  KVCOMPACT_HOST_DEVICE int sequence() const { return static_cast<int>(sequence_); }
  /// @brief Newest position (last prompt token at prefill, incoming token at decode). @return the position
  KVCOMPACT_HOST_DEVICE index_t step() const { return step_; }
  /// @brief Head dimension. @return the dimension
  KVCOMPACT_HOST_DEVICE index_t head_dim() const { return cache_.layout.head_dim(); }
  /// @brief Valid slots of a head. @param h KV head @return the length
  KVCOMPACT_HOST_DEVICE index_t length(int h) const { return cache_.lengths[cache_.head_index(sequence_, layer_, h)]; }
  /// @brief Logical position of a slot. @param h KV head @param slot slot @return the position
  KVCOMPACT_HOST_DEVICE index_t position(int h, index_t slot) const { return cache_.positions[cache_.slot_index(sequence_, layer_, h, slot)]; }
  /// @brief Score of a slot. @param h KV head @param slot slot @return the score
  KVCOMPACT_HOST_DEVICE float score(int h, index_t slot) const { return scratch_.scores[h * capacity() + slot]; }
  /// @brief Row-reduced score of a slot for one query head. @param g query head @param slot slot @return the score
  KVCOMPACT_HOST_DEVICE float query_score(int g, index_t slot) const { return scratch_.query_scores[g * capacity() + slot]; }
  /// @brief Decode budget of a head. @param h KV head @return the budget
  KVCOMPACT_HOST_DEVICE index_t budget(int h) const { return scratch_.budgets[h]; }
  /// @brief Keep flag. @param h KV head @param slot slot @return true when kept
  KVCOMPACT_HOST_DEVICE bool kept(int h, index_t slot) const { return scratch_.keep[h * capacity() + slot] != 0; }
  /// @brief Sets a keep flag. @param h KV head @param slot slot @param value the flag
  KVCOMPACT_HOST_DEVICE void keep(int h, index_t slot, bool value) const { scratch_.keep[h * capacity() + slot] = value ? 1 : 0; }
  /// @brief Merge target of a slot (-1: none). @param h KV head @param slot slot @return the target slot
  KVCOMPACT_HOST_DEVICE index_t target(int h, index_t slot) const { return scratch_.targets[h * capacity() + slot]; }
  /// @brief Sets a merge target. @param h KV head @param slot slot @param pivot target slot or -1
  KVCOMPACT_HOST_DEVICE void set_target(int h, index_t slot, index_t pivot) const { scratch_.targets[h * capacity() + slot] = static_cast<std::int32_t>(pivot); }
  /// @brief Slots of a head in ascending position (ready once prepare_order() ran for the head).
  /// @param h KV head @return the slot list
  KVCOMPACT_HOST_DEVICE const std::int32_t* order(int h) const { return scratch_.order + h * capacity(); }
  /// @brief Computes order(h) unless it is ready: the identity when the slots already are in strictly
  /// ascending position (checked in O(n)), else the slots sorted by (position, slot). Backends call
  /// it before selectors and mergers run; it uses index_scratch(h, 1) as scratch. Every worker of
  /// @p group must call it.
  /// @param group the kvcompact::execution_group running the step @param h KV head
  template <class Group>
  KVCOMPACT_HOST_DEVICE void prepare_order(const Group& group, int h) const {
    if (scratch_.order_ready[h]) return;
    std::int32_t* slots = scratch_.order + h * capacity();
    const index_t n = length(h);
    const int unsorted = group.reduce(
        n > 0 ? n - 1 : 0, [&](index_t j) { return position(h, j) >= position(h, j + 1) ? 1 : 0; }, 0, [](int a, int b) { return a | b; });
    group.for_each(n, [&](index_t j) { slots[j] = static_cast<std::int32_t>(j); });
    if (unsorted)
      group.sort(slots, n, [&](std::int32_t slot) { return static_cast<std::uint32_t>(position(h, slot)) ^ 0x80000000u; }, index_scratch(h, 1));
    group.once([&] { scratch_.order_ready[h] = 1; });
  }
  /// @brief Float scratch of a head (capacity entries). @param h KV head @return the array
  KVCOMPACT_HOST_DEVICE float* float_scratch(int h) const { return scratch_.floats + h * capacity(); }
  /// @brief Index scratch of a head (two arrays of capacity entries). @param h KV head @param which 0 or 1 @return the array
  KVCOMPACT_HOST_DEVICE std::int32_t* index_scratch(int h, int which) const { return scratch_.indices + (2 * h + which) * capacity(); }
  /// @brief Store shared by the layers of one sequence in one compression call. @return the array
  KVCOMPACT_HOST_DEVICE std::int32_t* shared_store() const { return scratch_.shared; }
  /// @brief The tensor-parallel group the layer's decisions span (null: this context's heads are all of them).
  /// @return the group or null
  KVCOMPACT_HOST_DEVICE const rank_group* ranks() const { return ranks_; }
  /// @brief Sets the tensor-parallel group (host backend; kvcompact::cpu::session::set_rank_group).
  /// @param group the group, or null for none
  KVCOMPACT_HOST_DEVICE void set_ranks(const rank_group* group) { ranks_ = group; }
  /// @brief The sums a kvcompact::rank_summing_selector's stage finished over every rank before this
  /// selection (device backend with several ranks; none otherwise). @return the sums
  KVCOMPACT_HOST_DEVICE rank_summed_values rank_summed() const { return rank_summed_; }
  /// @brief Hands the finished sums of this layer to the selector (kvcompact::cuda::session).
  /// @param sums the sums and the ranks they span
  KVCOMPACT_HOST_DEVICE void set_rank_summed(const rank_summed_values& sums) { rank_summed_ = sums; }
  /// @brief Key element as float. @param h KV head @param slot slot @param d dimension @return the value
  KVCOMPACT_HOST_DEVICE float key(int h, index_t slot, index_t d) const { return to_float(cache_.keys[element(h, slot, d)]); }
  /// @brief Value element as float. @param h KV head @param slot slot @param d dimension @return the value
  KVCOMPACT_HOST_DEVICE float value(int h, index_t slot, index_t d) const { return to_float(cache_.values[element(h, slot, d)]); }
  /// @brief Writes a key element. @param h KV head @param slot slot @param d dimension @param x the value
  KVCOMPACT_HOST_DEVICE void set_key(int h, index_t slot, index_t d, float x) const { cache_.keys[element(h, slot, d)] = from_float<T>(x); }
  /// @brief Writes a value element. @param h KV head @param slot slot @param d dimension @param x the value
  KVCOMPACT_HOST_DEVICE void set_value(int h, index_t slot, index_t d, float x) const { cache_.values[element(h, slot, d)] = from_float<T>(x); }

 private:
  KVCOMPACT_HOST_DEVICE index_t capacity() const { return cache_.layout.capacity(); }
  KVCOMPACT_HOST_DEVICE index_t element(int h, index_t slot, index_t d) const {
    return cache_.layout.offset(sequence_, layer_, h, slot) + d * cache_.layout.dim_stride();
  }

  kv_cache<T, Layout> cache_;
  layer_scratch scratch_;
  index_t sequence_;
  index_t layer_;
  index_t query_heads_;
  index_t step_;
  const rank_group* ranks_ = nullptr;
  rank_summed_values rank_summed_{};
};

KVCOMPACT_NAMESPACE_END
