// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The CPU backend: prefill compression, decode attention with scoring, decode-time eviction.
#pragma once

#include <kvcompact/detail/selection.hpp>
#include <kvcompact/detail/sequential_group.hpp>
#include <kvcompact/detail/slot_ops.hpp>
#include <kvcompact/layer_context.hpp>
#include <kvcompact/layouts/layer_condensed.hpp>
#include <kvcompact/policy.hpp>
#include <kvcompact/query_window.hpp>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace cpu {

/// @brief Runs a policy over an engine's cache on the CPU. Reference backend: plain loops, the same
/// component math as the CUDA kernels, no allocation (state and workspace come from the caller).
/// Selectors and mergers run through the selection contract (kvcompact::ranked_selector,
/// kvcompact::cooperative_selector, kvcompact::entry_merger) with a one-worker execution group:
/// ranking by partial selection (std::nth_element), never a full sort of a head.
///
/// Layers: compress_prefill() and append() take storage layers; attend() and observe() take the
/// layer that attends, which for a kvcompact::layer_mapped_layout is a model layer (mapped to its
/// storage layer, with its visibility rule) and otherwise the storage layer itself.
/// @tparam Policy a kvcompact::compression_policy
/// @tparam T storage element
/// @tparam Layout a kvcompact::kv_layout
template <class Policy, class T, class Layout>
class session {
  static_assert(compression_policy<Policy>, "kvcompact: cpu::session<Policy, T, Layout>: Policy must be a kvcompact::policy<Scorer, Selector, Merger>");
  static_assert(detail::check_layout<Layout>(), "kvcompact: cpu::session<Policy, T, Layout>: Layout is not a kvcompact::kv_layout");

 public:
  using state_type = typename Policy::scorer_type::state_type;  ///< per-slot decode state of the scorer

  /// @brief Bytes of persistent state (per-slot scorer state and per-head decode budgets) for a layout.
  /// @param layout the cache layout @return the size in bytes
  [[nodiscard]] static std::size_t state_bytes(const Layout& layout) {
    const auto heads = static_cast<std::size_t>(layout.num_sequences() * layout.num_layers() * layout.num_kv_heads());
    return heads * static_cast<std::size_t>(layout.capacity()) * sizeof(state_type) + heads * sizeof(std::int32_t);
  }
  /// @brief Bytes of workspace (scratch reused by every call).
  /// @param layout the cache layout @param shape attention shape @return the size in bytes
  [[nodiscard]] static std::size_t workspace_bytes(const Layout& layout, const attention_shape& shape) {
    const auto cap = static_cast<std::size_t>(layout.capacity());
    const auto h = static_cast<std::size_t>(layout.num_kv_heads());
    const auto g = static_cast<std::size_t>(shape.query_heads);
    const std::size_t words = cap * (3 * h + g) + cap * 2 * h + cap * h + cap * h + (cap + 2) + h + cap * g;
    return words * 4 + cap * h * sizeof(std::uint64_t) + h * sizeof(detail::ranked_head) + cap * h + h + 64;
  }

  /// @brief Binds a policy to a cache and checks every argument.
  /// @param policy the policy @param cache the engine's cache @param shape query heads and scale
  /// @param state state_bytes() bytes, kept between calls (initialised here)
  /// @param workspace workspace_bytes() bytes of scratch
  /// @throws kvcompact::error naming the bad argument ("policy" when a budget exceeds the capacity)
  session(const Policy& policy, const kv_cache<T, Layout>& cache, const attention_shape& shape, std::span<std::byte> state,
          std::span<std::byte> workspace)
      : policy_(policy), cache_(cache), shape_(shape) {
    cache_.validate("cpu::session");
    const index_t kv_heads = cache_.layout.num_kv_heads();
    detail::require(shape.query_heads > 0 && shape.query_heads % kv_heads == 0, "cpu::session", "shape.query_heads",
                    [&] { return "must be a positive multiple of the " + std::to_string(kv_heads) + " KV heads"; });
    detail::require(shape.head_dim == 0 || shape.head_dim == cache_.layout.head_dim(), "cpu::session", "shape.head_dim",
                    [&] { return "is " + std::to_string(shape.head_dim) + " but the cache's head_dim is " + std::to_string(cache_.layout.head_dim()); });
    detail::require(state.size() >= state_bytes(cache_.layout), "cpu::session", "state",
                    [&] { return "has " + std::to_string(state.size()) + " bytes, state_bytes() asks for " + std::to_string(state_bytes(cache_.layout)); });
    detail::require(workspace.size() >= workspace_bytes(cache_.layout, shape), "cpu::session", "workspace",
                    [&] { return "has " + std::to_string(workspace.size()) + " bytes, workspace_bytes() asks for " +
                        std::to_string(workspace_bytes(cache_.layout, shape)); });
    detail::require(reinterpret_cast<std::uintptr_t>(state.data()) % alignof(std::int32_t) == 0, "cpu::session", "state", "misaligned");
    detail::require(reinterpret_cast<std::uintptr_t>(workspace.data()) % alignof(std::int32_t) == 0, "cpu::session", "workspace",
                    "misaligned");
    detail::require_budgets_fit(policy_.selector, cache_.layout.num_layers(), capacity(), "cpu::session");
    scale_ = shape.scale != 0.0f ? shape.scale : 1.0f / std::sqrt(static_cast<float>(cache_.layout.head_dim()));
    slot_state_ = reinterpret_cast<state_type*>(state.data());
    budgets_ = reinterpret_cast<std::int32_t*>(state.data() + cache_.head_count() * capacity() * sizeof(state_type));
    carve(workspace);
    for (index_t s = 0; s < cache_.layout.num_sequences(); ++s)
      for (index_t l = 0; l < cache_.layout.num_layers(); ++l)
        for (index_t h = 0; h < kv_heads; ++h) {
          const index_t head = cache_.head_index(s, l, h);
          budgets_[head] = static_cast<std::int32_t>(policy_.selector.budget(l, cache_.layout.num_layers(), capacity()));
          for (index_t j = 0; j < cache_.lengths[head]; ++j) slot_state_[head * capacity() + j] = new_state(s, l, h, j);
        }
  }

  /// @brief Compresses every sequence and storage layer of a prefilled cache: scores, selects, merges
  /// and compacts in place; lengths, positions, decode state and budgets are updated.
  /// @param window observation-window queries (ignored by scorers that need no attention)
  /// @throws kvcompact::error on a bad window or a NaN score
  void compress_prefill(const query_window& window = {}) {
    if constexpr (Policy::needs_attention) {
      detail::require(window.queries != nullptr, "compress_prefill", "window.queries", "null pointer, but the scorer needs attention");
      detail::require(window.positions != nullptr, "compress_prefill", "window.positions", "null pointer");
      detail::require(window.rows > 0, "compress_prefill", "window.rows", "must be positive");
      detail::require(window.head_dim == 0 || window.head_dim == head_dim(), "compress_prefill", "window.head_dim",
                      [&] { return "is " + std::to_string(window.head_dim) + " but the cache's head_dim is " + std::to_string(head_dim()); });
    }
    cache_.validate("compress_prefill");
    for (index_t s = 0; s < cache_.layout.num_sequences(); ++s) {
      scratch_.shared[0] = -1;  // no decision published yet (followers of a missing leader keep everything)
      for (index_t l = 0; l < cache_.layout.num_layers(); ++l) compress_layer(s, l, window);
    }
  }

  /// @brief Inserts one token's K and V for every KV head of a storage layer. A head at its budget
  /// first evicts by the policy (victims merged if the merger wants) and the token reuses a freed
  /// slot; no memmove, no allocation.
  /// @param sequence sequence @param layer storage layer
  /// @param keys [kv_heads][head_dim] new keys (post-RoPE) @param values [kv_heads][head_dim] new values
  /// @param position the token's logical position
  /// @throws kvcompact::error when a head is full and nothing can be evicted, or on bad arguments
  void append(index_t sequence, index_t layer, const T* keys, const T* values, index_t position) {
    check_indices("append", sequence, layer);
    detail::require(keys != nullptr, "append", "keys", "null pointer");
    detail::require(values != nullptr, "append", "values", "null pointer");
    layer_context<T, Layout> ctx = context(sequence, layer, position);
    for (int h = 0; h < ctx.kv_heads(); ++h) {
      const index_t head = cache_.head_index(sequence, layer, h);
      std::int32_t& length = cache_.lengths[head];
      for (index_t j = 0; j < length; ++j) {
        const float rank = policy_.scorer.decode_score(slot_state_[head * capacity() + j], ctx.position(h, j));
        if (std::isnan(rank)) throw error("append", "scores", "NaN decode score at layer " + std::to_string(layer) + " slot " + std::to_string(j));
        scratch_.scores[h * capacity() + j] = rank;
        ctx.keep(h, j, true);
        ctx.set_target(h, j, -1);
      }
      detail::select_decode(group_, policy_.selector, ctx, h);
      detail::merge_head(group_, policy_.merger, ctx, h);
      const index_t slot = detail::claim_slot(group_, ctx, h, length, capacity(), slot_mover{this, sequence, layer, h});
      if (slot < 0)
        throw error("append", "cache", "head " + std::to_string(h) + " of layer " + std::to_string(layer) + " is full (capacity " +
                                           std::to_string(capacity()) + ") and the policy evicted nothing");
      const index_t base = cache_.layout.offset(sequence, layer, h, slot);
      for (index_t d = 0; d < head_dim(); ++d) {
        cache_.keys[base + d * cache_.layout.dim_stride()] = keys[h * head_dim() + d];
        cache_.values[base + d * cache_.layout.dim_stride()] = values[h * head_dim() + d];
      }
      cache_.positions[cache_.slot_index(sequence, layer, h, slot)] = static_cast<std::int32_t>(position);
      slot_state_[head * capacity() + slot] = new_state(sequence, layer, h, slot);
    }
  }

  /// @brief Decode attention of one token's queries with the scorer's state update fused in.
  /// @param sequence sequence @param layer attending layer (model layer for layer-mapped layouts)
  /// @param queries [query_heads][head_dim] fp32 queries @param position the token's position
  /// @param output [query_heads][head_dim] attention output
  void attend(index_t sequence, index_t layer, const float* queries, index_t position, float* output) {
    detail::require(output != nullptr, "attend", "output", "null pointer");
    run_attention(sequence, layer, queries, position, output);
  }

  /// @brief Scorer update only, for engines with their own attention kernel (one extra read of K).
  /// @param sequence sequence @param layer attending layer @param queries [query_heads][head_dim] fp32 queries
  /// @param position the token's position
  void observe(index_t sequence, index_t layer, const float* queries, index_t position) {
    run_attention(sequence, layer, queries, position, nullptr);
  }

  /// @brief Sets the decode budget of every head of a sequence (slots kept during decode).
  /// @param sequence sequence @param slots the budget
  void set_budget(index_t sequence, index_t slots) {
    check_indices("set_budget", sequence, 0);
    detail::require(slots > 0 && slots <= capacity(), "set_budget", "slots", "must be in [1, capacity]");
    for (index_t l = 0; l < cache_.layout.num_layers(); ++l)
      for (index_t h = 0; h < cache_.layout.num_kv_heads(); ++h) budgets_[cache_.head_index(sequence, l, h)] = static_cast<std::int32_t>(slots);
  }

  /// @brief Decode state of a slot. @param sequence sequence @param layer storage layer @param head KV head @param slot slot
  /// @return the scorer state
  [[nodiscard]] state_type slot_state(index_t sequence, index_t layer, index_t head, index_t slot) const {
    return slot_state_[cache_.slot_index(sequence, layer, head, slot)];
  }
  /// @brief Decode budget of a head. @param sequence sequence @param layer storage layer @param head KV head @return the budget
  [[nodiscard]] index_t budget(index_t sequence, index_t layer, index_t head) const { return budgets_[cache_.head_index(sequence, layer, head)]; }
  /// @brief The policy. @return the policy
  [[nodiscard]] const Policy& policy() const { return policy_; }
  /// @brief The cache view. @return the cache
  [[nodiscard]] const kv_cache<T, Layout>& cache() const { return cache_; }

 private:
  index_t capacity() const { return cache_.layout.capacity(); }
  index_t head_dim() const { return cache_.layout.head_dim(); }
  index_t group() const { return shape_.query_heads / cache_.layout.num_kv_heads(); }

  void carve(std::span<std::byte> workspace) {
    std::byte* p = workspace.data();
    const index_t cap = capacity(), h = cache_.layout.num_kv_heads(), g = shape_.query_heads;
    p += (8 - reinterpret_cast<std::uintptr_t>(p) % 8) % 8;  // the 8-byte arrays first (64 bytes of slack cover this)
    group_ = detail::sequential_group(reinterpret_cast<std::uint64_t*>(p), cap * h);
    p += cap * h * sizeof(std::uint64_t);
    ranking_ = reinterpret_cast<detail::ranked_head*>(p);
    p += h * sizeof(detail::ranked_head);
    auto floats = [&](index_t count) { auto* r = reinterpret_cast<float*>(p); p += count * 4; return r; };
    auto ints = [&](index_t count) { auto* r = reinterpret_cast<std::int32_t*>(p); p += count * 4; return r; };
    scratch_.scores = floats(cap * h);
    scratch_.query_scores = floats(cap * g);
    scratch_.floats = floats(cap * h);
    row_ = floats(cap * g);
    scratch_.indices = ints(cap * 2 * h);
    scratch_.order = ints(cap * h);
    scratch_.targets = ints(cap * h);
    scratch_.shared = ints(cap + 2);
    scratch_.budgets = ints(h);
    scratch_.keep = reinterpret_cast<std::uint8_t*>(p);
    p += cap * h;
    scratch_.order_ready = reinterpret_cast<std::uint8_t*>(p);
  }

  void check_indices(const char* where, index_t sequence, index_t layer) const {
    detail::require(sequence >= 0 && sequence < cache_.layout.num_sequences(), where, "sequence", "out of range");
    detail::require(layer >= 0 && layer < cache_.layout.num_layers(), where, "layer", "out of range");
  }

  layer_context<T, Layout> context(index_t sequence, index_t layer, index_t step) {
    for (index_t h = 0; h < cache_.layout.num_kv_heads(); ++h) {
      scratch_.budgets[h] = budgets_[cache_.head_index(sequence, layer, h)];
      scratch_.order_ready[h] = 0;
    }
    return layer_context<T, Layout>(cache_, scratch_, sequence, layer, shape_.query_heads, step);
  }

  state_type new_state(index_t sequence, index_t layer, index_t h, index_t slot) const {
    return detail::new_slot_state(policy_, cache_, sequence, layer, h, slot);
  }

  // Softmax probabilities of one query over the slots of a head that pass `visible` (others get 0).
  // Returns how many slots are visible.
  template <class Visible>
  index_t probabilities(index_t sequence, index_t layer, index_t h, const float* query, const Visible& visible, float* row) const {
    const index_t length = cache_.lengths[cache_.head_index(sequence, layer, h)];
    const index_t stride = cache_.layout.dim_stride();
    float max_logit = -INFINITY;
    index_t count = 0;
    for (index_t j = 0; j < length; ++j) {
      row[j] = 0.0f;
      if (!visible(position_of(sequence, layer, h, j))) continue;
      const index_t base = cache_.layout.offset(sequence, layer, h, j);
      float dot = 0.0f;
      for (index_t d = 0; d < head_dim(); ++d) dot += query[d] * to_float(cache_.keys[base + d * stride]);
      row[j] = dot * scale_;
      max_logit = row[j] > max_logit ? row[j] : max_logit;
      ++count;
    }
    float sum = 0.0f;
    for (index_t j = 0; j < length; ++j) {
      if (!visible(position_of(sequence, layer, h, j))) continue;
      row[j] = std::exp(row[j] - max_logit);
      sum += row[j];
    }
    if (count > 0)  // no visible key (a reads-ahead layer's first token): the output is zero
      for (index_t j = 0; j < length; ++j) row[j] = row[j] / sum;
    return count;
  }

  index_t position_of(index_t sequence, index_t layer, index_t h, index_t slot) const {
    return cache_.positions[cache_.slot_index(sequence, layer, h, slot)];
  }

  void score_layer(index_t sequence, index_t layer, const query_window& window) {
    const index_t kv_heads = cache_.layout.num_kv_heads();
    const auto& scorer = policy_.scorer;
    if constexpr (!Policy::needs_attention) {
      for (index_t h = 0; h < kv_heads; ++h)
        for (index_t j = 0; j < cache_.lengths[cache_.head_index(sequence, layer, h)]; ++j)
          scratch_.scores[h * capacity() + j] = detail::slot_score(policy_, cache_, sequence, layer, h, j);
      for (index_t g = 0; g < shape_.query_heads; ++g)  // per-query-head view for window selectors: its KV head's score
        for (index_t j = 0; j < cache_.lengths[cache_.head_index(sequence, layer, g / group())]; ++j)
          scratch_.query_scores[g * capacity() + j] = scratch_.scores[(g / group()) * capacity() + j];
    } else {
      for (index_t g = 0; g < shape_.query_heads; ++g) {
        const index_t h = g / group();
        const index_t length = cache_.lengths[cache_.head_index(sequence, layer, h)];
        float* acc = scratch_.query_scores + g * capacity();
        for (index_t j = 0; j < length; ++j) acc[j] = detail::reduction_identity(scorer.rows);
        for (index_t r = 0; r < window.rows; ++r) {
          const index_t query_position = window.positions[sequence * window.rows + r];
          const float* q = window.queries + window.offset(sequence, layer, g, r, cache_.layout.num_layers(), shape_.query_heads, head_dim());
          auto causal = [&](index_t p) { return p <= query_position; };
          const index_t visible = probabilities(sequence, layer, h, q, causal, row_);
          for (index_t j = 0; j < length; ++j)
            if (causal(position_of(sequence, layer, h, j))) acc[j] = detail::reduction_combine(scorer.rows, acc[j], scorer.row_term(row_[j], visible, query_position));
        }
        for (index_t j = 0; j < length; ++j) acc[j] = detail::reduction_finish(scorer.rows, acc[j], static_cast<int>(window.rows));
      }
      for (index_t h = 0; h < kv_heads; ++h) {
        const index_t first = Policy::shares_scores_across_kv_heads ? 0 : h * group();
        const index_t count = Policy::shares_scores_across_kv_heads ? shape_.query_heads : group();
        for (index_t j = 0; j < cache_.lengths[cache_.head_index(sequence, layer, h)]; ++j) {
          float acc = detail::reduction_identity(scorer.group);
          for (index_t g = first; g < first + count; ++g)
            acc = detail::reduction_combine(scorer.group, acc, scratch_.query_scores[g * capacity() + j]);
          scratch_.scores[h * capacity() + j] = detail::reduction_finish(scorer.group, acc, static_cast<int>(count));
        }
      }
    }
    for (index_t h = 0; h < kv_heads; ++h)
      for (index_t j = 0; j < cache_.lengths[cache_.head_index(sequence, layer, h)]; ++j)
        if (std::isnan(scratch_.scores[h * capacity() + j]))
          throw error("compress_prefill", "scores",
                      "NaN score at layer " + std::to_string(layer) + " head " + std::to_string(h) + " slot " + std::to_string(j) +
                          " (NaN in keys or queries?)");
  }

  void compress_layer(index_t sequence, index_t layer, const query_window& window) {
    score_layer(sequence, layer, window);
    index_t step = 0;
    for (index_t h = 0; h < cache_.layout.num_kv_heads(); ++h)
      for (index_t j = 0; j < cache_.lengths[cache_.head_index(sequence, layer, h)]; ++j)
        step = cache_.positions[cache_.slot_index(sequence, layer, h, j)] > step ? cache_.positions[cache_.slot_index(sequence, layer, h, j)] : step;
    layer_context<T, Layout> ctx = context(sequence, layer, step);
    for (int h = 0; h < ctx.kv_heads(); ++h)
      for (index_t j = 0; j < ctx.length(h); ++j) {
        ctx.keep(h, j, false);
        ctx.set_target(h, j, -1);
      }
    detail::select_layer(group_, policy_.selector, ctx, ranking_);
    for (int h = 0; h < ctx.kv_heads(); ++h) {
      detail::merge_head(group_, policy_.merger, ctx, h);
      const index_t head = cache_.head_index(sequence, layer, h);
      budgets_[head] = static_cast<std::int32_t>(policy_.selector.budget(layer, cache_.layout.num_layers(), ctx.length(h)));
      compact(ctx, h, step);
    }
  }

  // Moves kept slots to the front, keeping their relative slot order (ascending position after a
  // prefill), copying K/V bit-identically; the decode state starts from the prefill score.
  void compact(layer_context<T, Layout>& ctx, int h, index_t step) {
    const index_t head = cache_.head_index(ctx.sequence(), ctx.layer(), h);
    index_t kept = 0;
    for (index_t j = 0; j < ctx.length(h); ++j) {
      if (!ctx.kept(h, j)) continue;
      const index_t position = ctx.position(h, j);
      if (kept != j) move_slot(ctx.sequence(), ctx.layer(), h, j, kept);  // before the state write: move_slot copies the old state
      slot_state_[head * capacity() + kept] = policy_.scorer.state_from_prefill(scratch_.scores[h * capacity() + j], position, step);
      ++kept;
    }
    cache_.lengths[head] = static_cast<std::int32_t>(kept);
  }

  void move_slot(index_t sequence, index_t layer, index_t h, index_t from, index_t to) {
    detail::move_slot(cache_, slot_state_, sequence, layer, h, from, to);
  }

  // Moves slots of one head for claim_slot(), whose group code is host-device.
  struct slot_mover {
    session* self;
    index_t sequence, layer, h;
    KVCOMPACT_EXEC_CHECK_DISABLE
    template <class Index>
    KVCOMPACT_HOST_DEVICE void operator()(Index from, Index to) const {
      self->move_slot(sequence, layer, h, from, to);
    }
  };

  void run_attention(index_t sequence, index_t layer, const float* queries, index_t position, float* output) {
    detail::require(queries != nullptr, output ? "attend" : "observe", "queries", "null pointer");
    if constexpr (layer_mapped_layout<Layout>)
      detail::require(layer >= 0 && layer < cache_.layout.num_model_layers(), output ? "attend" : "observe", "layer", "out of range");
    const index_t storage = detail::storage_layer_of(cache_.layout, layer);
    check_indices(output ? "attend" : "observe", sequence, storage);
    auto visible = [&](index_t key_position) { return detail::attends(cache_.layout, layer, key_position, position); };
    const auto& scorer = policy_.scorer;
    for (index_t g = 0; g < shape_.query_heads; ++g) {
      const index_t h = g / group();
      const index_t length = cache_.lengths[cache_.head_index(sequence, storage, h)];
      float* row = row_ + g * capacity();
      const index_t count = probabilities(sequence, storage, h, queries + g * head_dim(), visible, row);
      if (output) {
        float* out = output + g * head_dim();
        for (index_t d = 0; d < head_dim(); ++d) out[d] = 0.0f;
        for (index_t j = 0; j < length; ++j) {
          if (row[j] == 0.0f) continue;
          const index_t base = cache_.layout.offset(sequence, storage, h, j);
          for (index_t d = 0; d < head_dim(); ++d) out[d] += row[j] * to_float(cache_.values[base + d * cache_.layout.dim_stride()]);
        }
      }
      if constexpr (Policy::needs_attention)
        for (index_t j = 0; j < length; ++j)
          if (visible(position_of(sequence, storage, h, j))) row[j] = scorer.row_term(row[j], count, position);
    }
    if constexpr (Policy::needs_attention) {
      for (index_t h = 0; h < cache_.layout.num_kv_heads(); ++h) {
        const index_t head = cache_.head_index(sequence, storage, h);
        const index_t first = Policy::shares_scores_across_kv_heads ? 0 : h * group();
        const index_t count = Policy::shares_scores_across_kv_heads ? shape_.query_heads : group();
        for (index_t j = 0; j < cache_.lengths[head]; ++j) {
          if (!visible(cache_.positions[head * capacity() + j])) continue;
          float acc = detail::reduction_identity(scorer.group);
          for (index_t g = first; g < first + count; ++g) acc = detail::reduction_combine(scorer.group, acc, row_[g * capacity() + j]);
          scorer.observe(slot_state_[head * capacity() + j], detail::reduction_finish(scorer.group, acc, static_cast<int>(count)), position);
        }
      }
    }
  }

  Policy policy_;
  kv_cache<T, Layout> cache_;
  attention_shape shape_;
  float scale_ = 1.0f;
  state_type* slot_state_ = nullptr;
  std::int32_t* budgets_ = nullptr;
  layer_scratch scratch_{};
  float* row_ = nullptr;
  detail::sequential_group group_{nullptr, 0};
  detail::ranked_head* ranking_ = nullptr;
};

}  // namespace cpu

KVCOMPACT_NAMESPACE_END
