// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Test-side selection context: plain std::vectors behind the interface documented by
/// kvcompact::detail::probe_selection_context, so a test can run a selector through the CPU backend's
/// selection path (kvtest::select(selector, ctx) / kvtest::select_decode(selector, ctx, head), or a
/// merger with kvtest::merge(merger, ctx, head)) directly with chosen scores, positions and keys, and
/// then read keep flags and merge targets.
///
/// Usage:
/// @code
///   kvtest::selection_harness ctx(/*kv_heads=*/2, /*query_heads=*/4, /*capacity=*/64, /*head_dim=*/8);
///   ctx.set_length(0, 40);                       // per-head valid slots (<= capacity)
///   ctx.position_ref(0, slot) = ...;             // logical positions (any slot order)
///   ctx.score_ref(0, slot) = ...;                // per-KV-head scores
///   ctx.query_score_ref(g, slot) = ...;          // per-query-head scores (WindowKV localization)
///   ctx.key_ref(0, slot, d) = ...;               // keys / values (KVMerger, mergers)
///   ctx.set_step(39); ctx.set_layer(2, 8);       // newest position, layer and layer count
///   ctx.begin_prefill(); kvtest::select(selector, ctx);   // every slot not kept, no targets
///   ctx.begin_decode(); ctx.budget_ref(0) = 30; kvtest::select_decode(selector, ctx, 0);  // every slot kept
///   ctx.kept(0, slot); ctx.target(0, slot); ctx.kept_positions(0);
///   BOOST_TEST(ctx.scratch_intact());            // selector stayed inside its scratch arrays
/// @endcode
///
/// Scratch sizes follow kvcompact::layer_context: per KV head `capacity` floats and two arrays of
/// `capacity` indices, one shared store of `capacity + 2` indices. Each array is followed by guard
/// entries; scratch_intact() reports whether any was overwritten (out-of-bounds write).
/// The shared store persists across begin_prefill() calls (like one compress_prefill call over the
/// layers of a sequence); reset_shared() sets it to "no decision" (-1), as cpu::session does.
#pragma once

#include <kvcompact/detail/selection.hpp>
#include <kvcompact/detail/sequential_group.hpp>
#include <kvcompact/types.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace kvtest {

using kvcompact::index_t;

/// A selection context over std::vectors (one sequence, one storage layer, all KV heads).
class selection_harness {
 public:
  /// Guard entries after every scratch array.
  static constexpr index_t guard = 64;

  /// @param kv_heads KV heads @param query_heads query heads @param capacity slots per head
  /// @param head_dim key/value dimension (0 when keys are not used)
  selection_harness(int kv_heads, int query_heads, index_t capacity, index_t head_dim = 0)
      : kv_heads_(kv_heads),
        query_heads_(query_heads),
        capacity_(capacity),
        head_dim_(head_dim),
        lengths_(kv_heads, 0),
        positions_(static_cast<std::size_t>(kv_heads * capacity), 0),
        scores_(static_cast<std::size_t>(kv_heads * capacity), 0.0f),
        query_scores_(static_cast<std::size_t>(query_heads * capacity), 0.0f),
        budgets_(kv_heads, 0),
        keys_(static_cast<std::size_t>(kv_heads * capacity * head_dim), 0.0f),
        values_(static_cast<std::size_t>(kv_heads * capacity * head_dim), 0.0f),
        keep_(static_cast<std::size_t>(kv_heads * capacity), 0),
        targets_(static_cast<std::size_t>(kv_heads * capacity), -1),
        order_(static_cast<std::size_t>(kv_heads * capacity), 0),
        order_ready_(kv_heads, 0),
        floats_(kv_heads, std::vector<float>(static_cast<std::size_t>(capacity + guard), float_guard())),
        indices_(2 * kv_heads, std::vector<std::int32_t>(static_cast<std::size_t>(capacity + guard), index_guard)),
        shared_(static_cast<std::size_t>(capacity + 2 + guard), index_guard) {
    reset_shared();
  }

  // ---- configuration (test side) ----------------------------------------------------------------
  /// Sets the valid slots of head @p h (positions default to the slot index). @param h KV head @param n length
  void set_length(int h, index_t n) {
    if (n < 0 || n > capacity_) throw std::invalid_argument("selection_harness: length outside [0, capacity]");
    lengths_[h] = n;
    for (index_t j = 0; j < n; ++j) position_ref(h, j) = static_cast<std::int32_t>(j);
    order_ready_[h] = 0;
  }
  /// Sets the same length on every head. @param n length
  void set_all_lengths(index_t n) {
    for (int h = 0; h < kv_heads_; ++h) set_length(h, n);
  }
  /// Newest position (last prompt token at prefill, incoming token at decode). @param t position
  void set_step(index_t t) { step_ = t; }
  /// Layer index and layer count. @param layer layer @param layers number of layers
  void set_layer(int layer, int layers) {
    layer_ = layer;
    num_layers_ = layers;
  }
  /// Mutable logical position of a slot (invalidates the position order).
  std::int32_t& position_ref(int h, index_t slot) {
    order_ready_[h] = 0;
    return positions_[at(h, slot)];
  }
  /// Mutable per-KV-head score of a slot.
  float& score_ref(int h, index_t slot) { return scores_[at(h, slot)]; }
  /// Mutable per-query-head score of a slot.
  float& query_score_ref(int g, index_t slot) { return query_scores_[static_cast<std::size_t>(g * capacity_ + slot)]; }
  /// Mutable decode budget of a head.
  index_t& budget_ref(int h) { return budgets_[h]; }
  /// Mutable key element.
  float& key_ref(int h, index_t slot, index_t d) { return keys_[element(h, slot, d)]; }
  /// Mutable value element.
  float& value_ref(int h, index_t slot, index_t d) { return values_[element(h, slot, d)]; }

  /// Prefill start: every valid slot not kept, no merge targets (as cpu::session::compress_prefill).
  void begin_prefill() {
    for (int h = 0; h < kv_heads_; ++h)
      for (index_t j = 0; j < capacity_; ++j) {
        keep_[at(h, j)] = 0;
        targets_[at(h, j)] = -1;
      }
    for (int h = 0; h < kv_heads_; ++h) order_ready_[h] = 0;
  }
  /// Decode start: every valid slot kept, no merge targets (as cpu::session::append).
  void begin_decode() {
    for (int h = 0; h < kv_heads_; ++h)
      for (index_t j = 0; j < capacity_; ++j) {
        keep_[at(h, j)] = j < lengths_[h] ? 1 : 0;
        targets_[at(h, j)] = -1;
      }
    for (int h = 0; h < kv_heads_; ++h) order_ready_[h] = 0;
  }
  /// Shared store back to "no decision published" (start of a sequence in compress_prefill).
  void reset_shared() {
    std::fill(shared_.begin(), shared_.begin() + capacity_ + 2, 0);
    shared_[0] = -1;
  }

  // ---- results (test side) ------------------------------------------------------------------------
  /// Slots of head @p h that are kept, ascending slot index.
  std::vector<index_t> kept_slots(int h) const {
    std::vector<index_t> out;
    for (index_t j = 0; j < lengths_[h]; ++j)
      if (kept(h, j)) out.push_back(j);
    return out;
  }
  /// Logical positions of the kept slots of head @p h, ascending.
  std::vector<index_t> kept_positions(int h) const {
    std::vector<index_t> out;
    for (index_t j = 0; j < lengths_[h]; ++j)
      if (kept(h, j)) out.push_back(position(h, j));
    std::sort(out.begin(), out.end());
    return out;
  }
  /// Number of kept slots of head @p h.
  index_t kept_count(int h) const { return static_cast<index_t>(kept_slots(h).size()); }
  /// True when no selector wrote past any scratch array (guards untouched).
  bool scratch_intact() const {
    for (const auto& f : floats_)
      for (index_t i = capacity_; i < capacity_ + guard; ++i)
        if (!is_float_guard(f[static_cast<std::size_t>(i)])) return false;
    for (const auto& v : indices_)
      for (index_t i = capacity_; i < capacity_ + guard; ++i)
        if (v[static_cast<std::size_t>(i)] != index_guard) return false;
    for (index_t i = capacity_ + 2; i < capacity_ + 2 + guard; ++i)
      if (shared_[static_cast<std::size_t>(i)] != index_guard) return false;
    return true;
  }
  /// The capacity per head.
  index_t capacity() const { return capacity_; }

  // ---- the selection context (library side; see kvcompact::detail::probe_selection_context) -----
  int kv_heads() const { return kv_heads_; }
  int query_heads() const { return query_heads_; }
  int layer() const { return layer_; }
  int num_layers() const { return num_layers_; }
  int sequence() const { return 0; }
  index_t step() const { return step_; }
  index_t head_dim() const { return head_dim_; }
  index_t length(int h) const { return lengths_[h]; }
  index_t position(int h, index_t slot) const { return positions_[at(h, slot)]; }
  float score(int h, index_t slot) const { return scores_[at(h, slot)]; }
  index_t budget(int h) const { return budgets_[h]; }
  float query_score(int g, index_t slot) const { return query_scores_[static_cast<std::size_t>(g * capacity_ + slot)]; }
  bool kept(int h, index_t slot) const { return keep_[at(h, slot)] != 0; }
  void keep(int h, index_t slot, bool value) const { keep_[at(h, slot)] = value ? 1 : 0; }
  index_t target(int h, index_t slot) const { return targets_[at(h, slot)]; }
  void set_target(int h, index_t slot, index_t pivot) const { targets_[at(h, slot)] = static_cast<std::int32_t>(pivot); }
  /// Slots of head @p h in ascending position (computed on first use after a change).
  const std::int32_t* order(int h) const {
    std::int32_t* slots = order_.data() + h * capacity_;
    if (!order_ready_[h]) {
      std::iota(slots, slots + lengths_[h], 0);
      std::sort(slots, slots + lengths_[h], [&](std::int32_t a, std::int32_t b) { return position(h, a) < position(h, b); });
      order_ready_[h] = 1;
    }
    return slots;
  }
  /// Backend side: the position order of head @p h is computed on first use by order().
  template <class Group>
  void prepare_order(const Group&, int h) const {
    order(h);
  }
  float* float_scratch(int h) const { return floats_[h].data(); }
  std::int32_t* index_scratch(int h, int which) const { return indices_[2 * h + which].data(); }
  std::int32_t* shared_store() const { return shared_.data(); }
  float key(int h, index_t slot, index_t d) const { return keys_[element(h, slot, d)]; }
  float value(int h, index_t slot, index_t d) const { return values_[element(h, slot, d)]; }
  void set_key(int h, index_t slot, index_t d, float x) const { keys_[element(h, slot, d)] = x; }
  void set_value(int h, index_t slot, index_t d, float x) const { values_[element(h, slot, d)] = x; }

 private:
  static constexpr std::int32_t index_guard = -0x5a5a5a5a;
  static float float_guard() { return -1.2345e30f; }
  static bool is_float_guard(float x) { return x == float_guard(); }
  std::size_t at(int h, index_t slot) const {
    if (h < 0 || h >= kv_heads_ || slot < 0 || slot >= capacity_) throw std::out_of_range("selection_harness: head or slot out of range");
    return static_cast<std::size_t>(h * capacity_ + slot);
  }
  std::size_t element(int h, index_t slot, index_t d) const {
    if (d < 0 || d >= head_dim_) throw std::out_of_range("selection_harness: dimension out of range");
    return at(h, slot) * static_cast<std::size_t>(head_dim_) + static_cast<std::size_t>(d);
  }

  int kv_heads_;
  int query_heads_;
  index_t capacity_;
  index_t head_dim_;
  int layer_ = 0;
  int num_layers_ = 1;
  index_t step_ = 0;
  std::vector<index_t> lengths_;
  std::vector<std::int32_t> positions_;
  std::vector<float> scores_;
  std::vector<float> query_scores_;
  std::vector<index_t> budgets_;
  mutable std::vector<float> keys_;
  mutable std::vector<float> values_;
  mutable std::vector<std::uint8_t> keep_;
  mutable std::vector<std::int32_t> targets_;
  mutable std::vector<std::int32_t> order_;
  mutable std::vector<std::uint8_t> order_ready_;
  mutable std::vector<std::vector<float>> floats_;
  mutable std::vector<std::vector<std::int32_t>> indices_;
  mutable std::vector<std::int32_t> shared_;
};

/// The CPU backend's execution group with scratch for a harness's selections (kept alive by the caller).
struct harness_group {
  std::vector<std::uint64_t> keys;                  ///< kth_largest scratch
  std::vector<kvcompact::detail::ranked_head> heads;  ///< ranked selectors' per-head state
  kvcompact::detail::sequential_group group;        ///< the group over `keys`
  explicit harness_group(const selection_harness& ctx)
      : keys(static_cast<std::size_t>(ctx.kv_heads() * ctx.capacity())), heads(static_cast<std::size_t>(ctx.kv_heads())),
        group(keys.data(), ctx.kv_heads() * ctx.capacity()) {}
};

/// Prefill selection of every head of the harness, as cpu::session runs it (call begin_prefill() first).
template <class Selector>
void select(const Selector& selector, const selection_harness& ctx) {
  harness_group g(ctx);
  kvcompact::detail::select_layer(g.group, selector, ctx, g.heads.data());
}

/// Decode-time eviction of head @p h, as cpu::session::append runs it (call begin_decode() first).
template <class Selector>
void select_decode(const Selector& selector, const selection_harness& ctx, int h) {
  harness_group g(ctx);
  kvcompact::detail::select_decode(g.group, selector, ctx, h);
}

/// The merger on head @p h, as the sessions run it after selection.
template <class Merger>
void merge(const Merger& merger, const selection_harness& ctx, int h) {
  harness_group g(ctx);
  kvcompact::detail::merge_head(g.group, merger, ctx, h);
}

}  // namespace kvtest
