// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The CPU backend: prefill compression, decode attention with scoring, decode-time eviction.
#pragma once

#include <kvcompact/cpu/detail/compaction.hpp>
#include <kvcompact/cpu/detail/parallel.hpp>
#include <kvcompact/cpu/detail/vector_math.hpp>
#include <kvcompact/detail/cache_checks.hpp>
#include <kvcompact/detail/parameter_checks.hpp>
#include <kvcompact/detail/selection.hpp>
#include <kvcompact/detail/sequential_group.hpp>
#include <kvcompact/detail/size_checks.hpp>
#include <kvcompact/detail/slot_ops.hpp>
#include <kvcompact/layer_context.hpp>
#include <kvcompact/layouts/layer_condensed.hpp>
#include <kvcompact/policy.hpp>
#include <kvcompact/query_window.hpp>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

namespace cpu {

/// @brief Runs a policy over an engine's cache on the CPU. Reference backend: plain loops, the same
/// component math as the CUDA kernels, no allocation (state and workspace come from the caller).
/// Selectors and mergers run through the selection contract (kvcompact::ranked_selector,
/// kvcompact::cooperative_selector, kvcompact::entry_merger) with a one-worker execution group:
/// ranking by partial selection (a radix select, detail::host_kth_largest), never a full sort of a head.
///
/// Layers: compress_prefill() and append() take storage layers; attend() and observe() take the
/// layer that attends, which for a kvcompact::layer_mapped_layout is a model layer (mapped to its
/// storage layer, with its visibility rule) and otherwise the storage layer itself.
///
/// Call order: compress_prefill() runs at most once, before the first append(); a second call, or
/// one after append(), throws (the cache is compressed already; a new prompt wants a new session,
/// which costs no allocation). compress_prefill_layer() is the layer-by-layer form of compress_prefill():
/// layers 0, 1, ... in order, each once, all before the first append(); the two forms do not mix.
/// Decoding without compress_prefill() is valid: the session manages
/// the cache as it was given (StreamingLLM from an empty cache, say). append() positions grow per
/// head: each token's position exceeds every position its heads hold. attend() and observe() may
/// take a position below the newest key (a prompt appended first and attended token by token): keys
/// after the query's position are masked.
///
/// Data checks (kvcompact::error naming the argument): queries (window and decode), appended keys and
/// values and the softmax scale must be finite; positions of valid slots must be set (not negative)
/// and distinct within a head (checked by compress_prefill(), or the first append() without it).
/// Keys and values already in the cache are checked where they would otherwise spread or surface:
/// a policy that merges checks every valid slot before its first merge (compress_prefill(), or the
/// first append()); any policy reports a non-finite prefill score ("scores") and a non-finite
/// attend() output ("cache"). A non-finite value that no query ever reads is not reported.
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
  /// @throws kvcompact::error when the layout's extents are invalid or the size overflows
  [[nodiscard]] static std::size_t state_bytes(const Layout& layout) {
    detail::validate_layout_extents(layout, "state_bytes");
    detail::require_size_fits({layout.num_sequences(), layout.num_layers(), layout.num_kv_heads(), layout.capacity(), sizeof(state_type)},
                              "state_bytes", "layout");
    const auto heads = static_cast<std::size_t>(layout.num_sequences() * layout.num_layers() * layout.num_kv_heads());
    return heads * static_cast<std::size_t>(layout.capacity()) * sizeof(state_type) + heads * sizeof(std::int32_t);
  }
  /// @brief Bytes of workspace (scratch reused by every call).
  /// @param layout the cache layout @param shape attention shape @return the size in bytes
  /// @throws kvcompact::error when the layout's extents or the query heads are invalid, or the size overflows
  [[nodiscard]] static std::size_t workspace_bytes(const Layout& layout, const attention_shape& shape) {
    detail::validate_layout_extents(layout, "workspace_bytes");
    shape.validate(layout.num_kv_heads(), layout.head_dim(), "workspace_bytes");
    detail::require_size_fits({layout.capacity(), layout.num_kv_heads() + shape.query_heads}, "workspace_bytes", "shape.query_heads");
    const auto cap = static_cast<std::size_t>(layout.capacity());
    const auto h = static_cast<std::size_t>(layout.num_kv_heads());
    const auto g = static_cast<std::size_t>(shape.query_heads);
    const auto strip = static_cast<std::size_t>(strip_capacity(shape.query_heads));
    const auto blocks = static_cast<std::size_t>(blocks_of(layout.capacity())), dims = static_cast<std::size_t>(layout.head_dim());
    const std::size_t shared = Policy::shares_scores_across_kv_heads ? cap : 0;  // layer_scores_
    const std::size_t selection = cap * (3 * h + g) + shared + cap * 2 * h + cap * h + cap * h + (cap + 2) + h;
    const std::size_t attention = cap * strip + dims * strip + 3 * strip * blocks + 2 * strip + g * blocks * dims;
    return (selection + attention) * 4 + cap * h * sizeof(std::uint64_t) + h * sizeof(detail::ranked_head) + cap * h + h + 64;
  }

  /// @brief Sets how many threads the calls of this session use (OpenMP builds; a build without
  /// OpenMP runs serially). Results do not depend on the count.
  /// @param count threads; 0 (the default) means OpenMP's default team size, i.e. all cores unless
  /// OMP_NUM_THREADS or omp_set_num_threads() say otherwise
  void set_threads(int count) {
    detail::require(count >= 0, "set_threads", "count", "must not be negative");
    threads_ = count;
  }
  /// @brief Makes this session one rank of a tensor-parallel group (kvcompact::rank_group): its KV heads
  /// are the rank's share of the model's, and the decisions that span the KV heads of a layer call the
  /// group's all-reduce, so every rank keeps what one unsharded session would keep for its heads, with
  /// the same scores and decode state bit for bit:
  /// - the layer's newest position, which recent-token protection counts from (at prefill);
  /// - Ada-KV's layer-wide ranking (at prefill);
  /// - scores shared across the KV heads of a layer (TOVA, PrefixKV, Elastic Cache: every query head
  ///   of the model contributes), at prefill and in every attend() / observe(), whose state drives
  ///   decode-time eviction; the ranks continue one reduction in the unsharded query-head order;
  /// - WindowKV's window scores, which average every query head of the layer (at prefill).
  ///
  /// Every rank must make the same calls in the same order, over caches of the same extents whose heads
  /// together satisfy what one session over all of them requires (slot-aligned heads for shared
  /// scores, equal layer groups for WindowKV; each rank checks its own heads). A call that throws on
  /// one rank leaves the others waiting in the all-reduce: the engine aborts its group then. Set it
  /// before compress_prefill(); a group of one rank is the default.
  /// @param group the rank, the rank count and the engine's all-reduce (not copied deeper: the
  /// context pointer must stay valid)
  /// @throws kvcompact::error naming "group.*" for a bad group, or "policy" for Ada-KV's strict repair
  /// (which moves slots between the heads of one rank only) when the group has several ranks
  void set_rank_group(const rank_group& group) {
    constexpr const char* where = "set_rank_group";
    group.validate(where);
    if constexpr (requires { policy_.selector.strict; })
      detail::require(group.ranks == 1 || !policy_.selector.strict, where, "policy", "Ada-KV's strict repair moves slots between heads of one rank only");
    ranks_ = group;
  }

  /// @brief Threads the calls of this session use. @return the count (1 without OpenMP)
  [[nodiscard]] int threads() const { return detail::team_size(threads_); }

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
    shape.validate(kv_heads, cache_.layout.head_dim(), "cpu::session");
    detail::require(state.size() >= state_bytes(cache_.layout), "cpu::session", "state",
                    [&] { return "has " + std::to_string(state.size()) + " bytes, state_bytes() asks for " + std::to_string(state_bytes(cache_.layout)); });
    detail::require(workspace.size() >= workspace_bytes(cache_.layout, shape), "cpu::session", "workspace",
                    [&] { return "has " + std::to_string(workspace.size()) + " bytes, workspace_bytes() asks for " +
                        std::to_string(workspace_bytes(cache_.layout, shape)); });
    detail::require(reinterpret_cast<std::uintptr_t>(state.data()) % alignof(std::int32_t) == 0, "cpu::session", "state", "misaligned");
    detail::require(reinterpret_cast<std::uintptr_t>(workspace.data()) % alignof(std::int32_t) == 0, "cpu::session", "workspace",
                    "misaligned");
    detail::validate_policy(policy_, cache_.layout, "cpu::session");
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
  /// @throws kvcompact::error on a bad window (non-finite queries, negative positions included), bad
  /// cache content (unset or repeated positions; for merging policies a non-finite key or value), a
  /// NaN score, or a second call / a call after append() ("session")
  void compress_prefill(const query_window& window = {}) {
    constexpr const char* where = "compress_prefill";
    detail::require(!compressed_, where, "session", "called twice: the cache is compressed already (one compression per session)");
    detail::require(!decoding_, where, "session", "called after append(): compress the prefill before decoding starts");
    detail::require(layers_compressed_ == 0, where, "session", "called after compress_prefill_layer(): the layers are being compressed one by one");
    check_window(where, window, cache_.layout.num_layers());
    cache_.validate(where);
    check_cache_content(where);
    compressed_ = true;
    for (index_t s = 0; s < cache_.layout.num_sequences(); ++s) {
      scratch_.shared[0] = -1;  // no decision published yet (followers of a missing leader keep everything)
      for (index_t l = 0; l < cache_.layout.num_layers(); ++l) compress_layer(s, l, window, {l, cache_.layout.num_layers()});
    }
  }

  /// @brief Compresses one storage layer of every sequence as soon as its prefill is done, with the
  /// same stages and keep-sets as compress_prefill(): an engine calls it for layers 0, 1, ... in order,
  /// each once, and needs only that layer's window queries in memory (and, when it fills the cache
  /// layer by layer, room for one uncompressed layer beyond the compressed ones). Decoding (append())
  /// starts after the last layer. WindowKV-style selectors, which share one decision across layers,
  /// are rejected at compile time: use compress_prefill().
  /// @param layer storage layer, the next one in order (0 first)
  /// @param layer_window the window queries of this layer only: query_window's layout with one layer,
  /// `queries[((sequence * query_heads + head) * rows + row) * head_dim + d]`, positions as usual
  /// (ignored by scorers that need no attention)
  /// @throws kvcompact::error naming "layer" when it is not the next layer, "session" after
  /// compress_prefill() or append(), and what compress_prefill() reports for this layer's data
  void compress_prefill_layer(index_t layer, const query_window& layer_window = {}) {
    static_assert(!detail::decides_across_layers<typename Policy::selector_type>,
                  "kvcompact: compress_prefill_layer: this selector shares one decision across layers (WindowKV); use compress_prefill()");
    constexpr const char* where = "compress_prefill_layer";
    detail::require(!compressed_, where, "session", "the cache is compressed already (compress_prefill() or every layer)");
    detail::require(!decoding_, where, "session", "called after append(): compress the prefill before decoding starts");
    detail::require(layer == layers_compressed_, where, "layer", [&] {
      return "is " + std::to_string(layer) + ", expected " + std::to_string(layers_compressed_) + ": each storage layer is compressed once, in order";
    });
    check_window(where, layer_window, 1);
    cache_.validate(where);
    check_cache_content(where, {layer, 1});
    for (index_t s = 0; s < cache_.layout.num_sequences(); ++s) compress_layer(s, layer, layer_window, {0, 1});
    compressed_ = ++layers_compressed_ == cache_.layout.num_layers();
  }

  /// @brief Inserts one token's K and V for every KV head of a storage layer. A head at its budget
  /// first evicts by the policy (victims merged if the merger wants) and the token reuses a freed
  /// slot; no memmove, no allocation.
  /// @param sequence sequence @param layer storage layer
  /// @param keys [kv_heads][head_dim] new keys (post-RoPE) @param values [kv_heads][head_dim] new values
  /// @param position the token's logical position, above every position the layer's heads hold
  /// @throws kvcompact::error when a head is full and nothing can be evicted, or on bad arguments
  /// (non-finite keys or values, a position that does not grow)
  void append(index_t sequence, index_t layer, const T* keys, const T* values, index_t position) {
    check_indices("append", sequence, layer);
    detail::require(keys != nullptr, "append", "keys", "null pointer");
    detail::require(values != nullptr, "append", "values", "null pointer");
    check_position("append", position);
    detail::require_finite(keys, cache_.layout.num_kv_heads() * head_dim(), "append", "keys");
    detail::require_finite(values, cache_.layout.num_kv_heads() * head_dim(), "append", "values");
    detail::require(layers_compressed_ == 0 || compressed_, "append", "session", [&] {
      return "compress_prefill_layer() has compressed " + std::to_string(layers_compressed_) + " of " + std::to_string(cache_.layout.num_layers()) +
             " layers: compress every layer before decoding";
    });
    if (!compressed_ && !decoding_) check_cache_content("append");
    for (index_t h = 0; h < cache_.layout.num_kv_heads(); ++h) {
      const index_t newest = detail::newest_position(cache_, sequence, layer, h);
      detail::require(position > newest, "append", "position", [&] {
        return std::to_string(position) + " does not follow position " + std::to_string(newest) + " held by head " + std::to_string(h) +
               " of layer " + std::to_string(layer) + " (positions grow with every appended token)";
      });
    }
    decoding_ = true;
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
      const index_t layer_slots = detail::layer_capacity(cache_.layout, layer);  // below capacity() in ragged layouts
      const index_t slot = detail::claim_slot(group_, ctx, h, length, layer_slots, slot_mover{this, sequence, layer, h});
      if (slot < 0)
        throw error("append", "cache", "head " + std::to_string(h) + " of layer " + std::to_string(layer) + " is full (capacity " +
                                           std::to_string(layer_slots) + ") and the policy evicted nothing");
      if (!detail::slot_in_range(cache_.layout, sequence, slot)) {  // a new slot beyond the pages the sequence owns
        --length;
        throw error("append", "cache", "slot " + std::to_string(slot) + " of sequence " + std::to_string(sequence) +
                                           " is not in a page the layout gives it: add a page before appending");
      }
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
  /// @throws kvcompact::error on bad arguments (non-finite queries, a negative position) and when the
  /// output is not finite ("cache": a NaN or Inf key or value was read, or the logits overflowed)
  void attend(index_t sequence, index_t layer, const float* queries, index_t position, float* output) {
    detail::require(output != nullptr, "attend", "output", "null pointer");
    check_queries("attend", queries, position);
    run_attention(sequence, layer, queries, position, output);
    for (index_t i = 0; i < shape_.query_heads * head_dim(); ++i)
      detail::require(std::isfinite(output[i]), "attend", "cache", [&] {
        return "the output of query head " + std::to_string(i / head_dim()) + " is not finite: the keys or values it read hold NaN or Inf, or "
               "the logits overflow";
      });
  }

  /// @brief Scorer update only, for engines with their own attention kernel (one extra read of K).
  /// @param sequence sequence @param layer attending layer @param queries [query_heads][head_dim] fp32 queries
  /// @param position the token's position
  /// @throws kvcompact::error on bad arguments (non-finite queries, a negative position)
  void observe(index_t sequence, index_t layer, const float* queries, index_t position) {
    check_queries("observe", queries, position);
    run_attention(sequence, layer, queries, position, nullptr);
  }

  /// @brief Sets the decode budget of every head of a sequence (slots kept during decode).
  /// @param sequence sequence @param slots the budget, at least what the policy's protected tokens need
  /// @throws kvcompact::error when either is out of range
  void set_budget(index_t sequence, index_t slots) {
    check_indices("set_budget", sequence, 0);
    detail::require(slots > 0 && slots <= capacity(), "set_budget", "slots", "must be in [1, capacity]");
    detail::require_protected_fit(detail::smallest_decode_budget(policy_.selector), slots, "set_budget", "slots");
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
  static constexpr index_t slot_block = 256;  // slots per parallel block (fixed: results never depend on the thread count)
  static constexpr int score_batch = 16;      // slots per slot_scores() call of a batched slot scorer (16 sums side by side)
  static constexpr index_t value_run = 16;    // value rows value_rows() adds per register pass (in L1)
  static constexpr index_t prefetch_rows = 16;  // how far ahead row_logits() prefetches key rows
  static constexpr index_t narrow_strip_rows = 4;  // window strips of at most this many rows take row_logits()
  static constexpr index_t compact_prefetch_slots = 16;  // how many kept slots ahead compact() prefetches K/V rows
  static constexpr index_t window_prefetch_keys = 2 * detail::tile_keys;  // how far ahead window_logits() prefetches key rows

  index_t capacity() const { return cache_.layout.capacity(); }
  index_t head_dim() const { return cache_.layout.head_dim(); }
  index_t group() const { return shape_.query_heads / cache_.layout.num_kv_heads(); }

  // Rows of the logit buffer: one strip of window rows, or the query heads of a decode step.
  static index_t strip_capacity(index_t query_heads) {
    const index_t rows = query_heads > detail::tile_rows ? query_heads : detail::tile_rows;
    return (rows + detail::tile_rows - 1) / detail::tile_rows * detail::tile_rows;
  }

  void carve(std::span<std::byte> workspace) {
    std::byte* p = workspace.data();
    const index_t cap = capacity(), h = cache_.layout.num_kv_heads(), g = shape_.query_heads;
    const index_t strip = strip_capacity(g), blocks = blocks_of(cap);
    p += (64 - reinterpret_cast<std::uintptr_t>(p) % 64) % 64;  // a cache-line boundary (64 bytes of slack cover this)
    packed_ = reinterpret_cast<float*>(p);  // first: its rows start on cache lines (whole 64-byte loads), and its size keeps 8-byte alignment
    p += head_dim() * strip * 4;
    selection_keys_ = reinterpret_cast<std::uint64_t*>(p);
    group_ = detail::sequential_group(selection_keys_, cap * h);
    p += cap * h * sizeof(std::uint64_t);
    ranking_ = reinterpret_cast<detail::ranked_head*>(p);
    p += h * sizeof(detail::ranked_head);
    auto floats = [&](index_t count) { auto* r = reinterpret_cast<float*>(p); p += count * 4; return r; };
    auto ints = [&](index_t count) { auto* r = reinterpret_cast<std::int32_t*>(p); p += count * 4; return r; };
    scratch_.scores = floats(cap * h);
    scratch_.query_scores = floats(cap * g);
    scratch_.floats = floats(cap * h);
    layer_scores_ = floats(Policy::shares_scores_across_kv_heads ? cap : 0);
    logits_ = floats(cap * strip);
    block_max_ = floats(strip * blocks);
    block_sum_ = floats(strip * blocks);
    partial_output_ = floats(g * blocks * head_dim());
    block_count_ = ints(strip * blocks);
    row_counts_ = ints(strip);
    row_positions_ = ints(strip);
    scratch_.indices = ints(cap * 2 * h);
    scratch_.order = ints(cap * h);
    scratch_.targets = ints(cap * h);
    scratch_.shared = ints(cap + 2);
    scratch_.budgets = ints(h);
    scratch_.keep = reinterpret_cast<std::uint8_t*>(p);
    p += cap * h;
    scratch_.order_ready = reinterpret_cast<std::uint8_t*>(p);
  }

  void check_position(const char* where, index_t position) const {
    detail::require(position >= 0 && position <= std::numeric_limits<std::int32_t>::max(), where, "position",
                    [&] { return "is " + std::to_string(position) + ", outside [0, 2^31)"; });
  }

  void check_queries(const char* where, const float* queries, index_t position) const {
    detail::require(queries != nullptr, where, "queries", "null pointer");
    check_position(where, position);
    detail::require_finite(queries, shape_.query_heads * head_dim(), where, "queries");
  }

  // What the cache holds when the session first compresses or decodes: positions set and distinct;
  // heads aligned where the policy compares them slot by slot or shares decisions across layers; for a
  // policy that merges, finite keys and values (a merge would spread a NaN into kept slots).
  void check_cache_content(const char* where, detail::layer_range layers = {}) const {
    detail::require_valid_positions(cache_, scratch_.indices, where, layers);
    if constexpr (Policy::shares_scores_across_kv_heads) detail::require_slot_aligned_heads(cache_, where, layers);
    if (const index_t group = detail::decision_group(policy_.selector); group > 0)
      detail::require_equal_layer_groups(cache_, group, scratch_.indices, where);
    if constexpr (Policy::merges) detail::require_finite_slots(cache_, where, layers);
  }

  // The observation window of compress_prefill() (over @p layers storage layers) or of
  // compress_prefill_layer() (one layer): pointers, rows, head dimension, positions, finite queries.
  void check_window(const char* where, const query_window& window, index_t layers) const {
    if constexpr (Policy::needs_attention) {
      detail::require(window.queries != nullptr, where, "window.queries", "null pointer, but the scorer needs attention");
      detail::require(window.positions != nullptr, where, "window.positions", "null pointer");
      detail::require(window.rows > 0, where, "window.rows", "must be positive");
      detail::require(window.head_dim == 0 || window.head_dim == head_dim(), where, "window.head_dim",
                      [&] { return "is " + std::to_string(window.head_dim) + " but the cache's head_dim is " + std::to_string(head_dim()); });
      for (index_t r = 0; r < cache_.layout.num_sequences() * window.rows; ++r)
        detail::require(window.positions[r] >= 0, where, "window.positions",
                        [&] { return "entry " + std::to_string(r) + " is " + std::to_string(window.positions[r]) + ": positions must not be negative"; });
      detail::require_finite(window.queries, cache_.layout.num_sequences() * layers * shape_.query_heads * window.rows * head_dim(), where,
                             "window.queries");
    }
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
    layer_context<T, Layout> ctx(cache_, scratch_, sequence, layer, shape_.query_heads, step);
    if (ranks_.ranks > 1) ctx.set_ranks(&ranks_);
    return ctx;
  }

  state_type new_state(index_t sequence, index_t layer, index_t h, index_t slot) const {
    return detail::new_slot_state(policy_, cache_, sequence, layer, h, slot);
  }

  index_t position_of(index_t sequence, index_t layer, index_t h, index_t slot) const {
    return cache_.positions[cache_.slot_index(sequence, layer, h, slot)];
  }
  index_t length_of(index_t sequence, index_t layer, index_t h) const { return cache_.lengths[cache_.head_index(sequence, layer, h)]; }
  static index_t blocks_of(index_t length) { return (length + slot_block - 1) / slot_block; }
  int team() const { return detail::team_size(threads_); }

  /// @brief Runs `body(h, first, end)` for every block `[first, end)` of slot_block slots (a head's last
  /// block may be shorter) of the KV heads `[first_head, end_head)`, in parallel. The one split of a
  /// layer's slots into parallel work: one item per (head, block), as many blocks per head as the range's
  /// longest head has (a shorter head's extra items do nothing), in contiguous runs per thread
  /// (detail::parallel_for), so one head alone in the range spreads over every thread even when it holds
  /// far fewer slots than the capacity. A block's work does not depend on the thread that runs it:
  /// results never depend on the thread count.
  /// @param sequence sequence @param layer storage layer @param first_head first KV head of the range
  /// @param end_head one past the last KV head @param body called once per block
  template <class Body>
  void for_each_block(index_t sequence, index_t layer, index_t first_head, index_t end_head, const Body& body) const {
    index_t longest = 0;
    for (index_t h = first_head; h < end_head; ++h) longest = length_of(sequence, layer, h) > longest ? length_of(sequence, layer, h) : longest;
    const index_t per_head = blocks_of(longest);
    detail::parallel_for((end_head - first_head) * per_head, team(), [&](index_t item) {
      const index_t h = first_head + item / per_head, first = item % per_head * slot_block, length = length_of(sequence, layer, h);
      if (first < length) body(h, first, first + slot_block < length ? first + slot_block : length);
    });
  }
  /// @brief for_each_block() over every KV head of the layer, `[0, num_kv_heads)`.
  /// @param sequence sequence @param layer storage layer @param body called once per block
  template <class Body>
  void for_each_block(index_t sequence, index_t layer, const Body& body) const {
    for_each_block(sequence, layer, 0, cache_.layout.num_kv_heads(), body);
  }

  // Logits of `rows` query rows against the keys [first, end) of a KV head, written to
  // logits[row * capacity + j] (times the scale). The rows come packed in tiles of `width` (8, 16 or
  // 32) rows (packed_); each key row is copied into a buffer first (detail::copy_row, also for fp32):
  // the tile's product reads its tile_keys rows side by side, one element of each in turn, which from
  // memory stalled where a row read in order streams (TOVA's one-row window at 16k tokens: this pass
  // about 2x faster with the copy, on the loaded 2-vCPU EPYC). A head_dim of at most row_chunk is
  // copied once for all tiles of rows. The tile's rows are located once per tile of keys (in a
  // microbenchmark of TOVA's window the bookkeeping around the product took about a third of the pass).
  // Contiguous key rows window_prefetch_keys ahead are prefetched into L2: the hardware prefetch alone
  // left the copies waiting on memory for about half of the pass (TOVA's 4-row strip at 16k tokens,
  // before it took row_logits(): this pass 8.6-10.6 -> 7.4-7.5 ms, 2026-12-02, 2-vCPU EPYC).
  template <int width>
  void window_logits(index_t sequence, index_t layer, index_t h, index_t first, index_t end, index_t rows, float* logits) const {
    const index_t dims = head_dim(), tiles = (rows + width - 1) / width, stride = cache_.layout.dim_stride();
    const std::size_t row_bytes = stride == 1 ? static_cast<std::size_t>(dims) * sizeof(T) : 0;
    float buffer[detail::tile_keys][detail::row_chunk];
    const float* keys[detail::tile_keys];
    for (index_t j = first; j < end; j += detail::tile_keys) {
      const T* rows_of_tile[detail::tile_keys];  // past `end`, the last row again (its logits are not stored)
      for (int k = 0; k < detail::tile_keys; ++k) rows_of_tile[k] = cache_.keys + cache_.layout.offset(sequence, layer, h, j + k < end ? j + k : end - 1);
      const index_t keys_stored = end - j < detail::tile_keys ? end - j : detail::tile_keys;
      for (index_t k = j + window_prefetch_keys; k < j + window_prefetch_keys + detail::tile_keys && k < end && row_bytes > 0; ++k)
        detail::prefetch_bytes_to_l2(cache_.keys + cache_.layout.offset(sequence, layer, h, k), row_bytes);
      for (index_t t = 0; t < tiles; ++t) {
        float acc[detail::tile_keys][width] = {};
        for (index_t d = 0; d < dims; d += detail::row_chunk) {
          const index_t count = dims - d < detail::row_chunk ? dims - d : detail::row_chunk;
          const float* queries = packed_ + (t * dims + d) * width;
          if (t == 0 || dims > detail::row_chunk)
            for (int k = 0; k < detail::tile_keys; ++k) keys[k] = detail::copy_row(rows_of_tile[k], stride, d, count, buffer[k]);
          detail::tile_product<width>(queries, keys, count, acc);
        }
        const index_t used = rows - t * width < width ? rows - t * width : width;
        for (index_t r = 0; r < used; ++r)
          for (index_t k = 0; k < keys_stored; ++k) logits[(t * width + r) * capacity() + j + k] = acc[k][r] * scale_;
      }
    }
  }

  // Softmax of the slots [first, end) of `rows` logit rows (logits[row * capacity + j]): masks the
  // slots a row does not see, replaces each logit by exp(logit - block max) (0 when masked) and
  // records the block's max, sum and visible count per row at stats index `at` + row.
  template <class Visible>
  void block_softmax(float* logits, index_t rows, index_t first, index_t end, const Visible& visible, index_t at) const {
    for (index_t r = 0; r < rows; ++r) {
      const detail::segment_softmax block =
          detail::softmax_segment(logits + r * capacity() + first, end - first, [&](index_t i) { return visible(first + i, r); });
      block_max_[at + r] = block.maximum;
      block_sum_[at + r] = block.sum;
      block_count_[at + r] = block.visible;
    }
  }

  // Combines the block statistics of one row (blocks at stats index first + b * step, in block order):
  // each block's max is replaced by the factor that turns its exps into probabilities; returns the
  // row's visible count.
  index_t combine_blocks(index_t first, index_t step, index_t blocks) const {
    float maximum = -INFINITY;
    index_t count = 0;
    for (index_t b = 0; b < blocks; ++b) {
      maximum = block_max_[first + b * step] > maximum ? block_max_[first + b * step] : maximum;
      count += block_count_[first + b * step];
    }
    float sum = 0.0f;
    for (index_t b = 0; b < blocks; ++b)
      if (block_count_[first + b * step] > 0) sum += block_sum_[first + b * step] * detail::exp_approx(block_max_[first + b * step] - maximum);
    for (index_t b = 0; b < blocks; ++b)
      block_max_[first + b * step] = block_count_[first + b * step] > 0 ? detail::exp_approx(block_max_[first + b * step] - maximum) / sum : 0.0f;
    return count;
  }

  // Where a storage layer's queries sit in a window: its index there, and the window's layers (all of
  // them for compress_prefill(), one for compress_prefill_layer()).
  struct window_layer {
    index_t layer;   // the layer's index in the window
    index_t layers;  // layers the window holds
  };

  // Scores of attention scorers: for each KV head, strips of window rows (all query heads of the group
  // for consecutive rows, at most tile_rows of them) go through blocked window products with the
  // softmax fused per block of slots; the window x slots matrix is never stored, only one strip's.
  // A narrow window (at most narrow_strip_rows rows per KV head: TOVA's last query over a GQA group of
  // up to 4 query heads) is one strip per head, and the strips of up to strip_capacity() rows' worth
  // of heads go through each pass together, their rows stacked (head h's at (h - first head) * rows):
  // two parallel regions per layer instead of two per head (a region costs a wake of the sleeping
  // workers, which at 2 threads made TOVA at 4k tokens slower than at 1 thread).
  void score_window(index_t sequence, index_t layer, const query_window& window, window_layer in_window) {
    const auto& scorer = policy_.scorer;
    const index_t group_size = group(), dims = head_dim(), layers = in_window.layers, kv_heads = cache_.layout.num_kv_heads();
    const index_t strip_rows = group_size < detail::tile_rows ? detail::tile_rows / group_size : 1;  // window rows per strip
    const std::int32_t* query_positions = window.positions + sequence * window.rows;
    const index_t head_rows = window.rows * group_size;  // window rows of a KV head
    const index_t heads_per_pass = head_rows > 0 && head_rows <= narrow_strip_rows ? strip_capacity(shape_.query_heads) / head_rows : 1;
    auto positions_of = [&](index_t h) { return cache_.positions + cache_.slot_index(sequence, layer, h, 0); };
    auto scores_of = [&](index_t h) { return scratch_.query_scores + h * group_size * capacity(); };
    for (index_t h = 0; h < kv_heads; ++h) {
      float* scores = scores_of(h);
      const index_t length = length_of(sequence, layer, h);
      for (index_t g = 0; g < group_size; ++g)
        for (index_t j = 0; j < length; ++j) scores[g * capacity() + j] = detail::reduction_identity(scorer.rows);
    }
    for (index_t first_head = 0; first_head < kv_heads; first_head += heads_per_pass) {
      const index_t end_head = first_head + heads_per_pass < kv_heads ? first_head + heads_per_pass : kv_heads;
      for (index_t first_row = 0; first_row < window.rows; first_row += strip_rows) {
        // Row r of a head's strip: window row first_row + r / G of query head h * G + r % G.
        const index_t rows = (window.rows - first_row < strip_rows ? window.rows - first_row : strip_rows) * group_size;
        const index_t pass_rows = (end_head - first_head) * rows;  // the stats index of (block b, head h, row r): b * pass_rows + (h - first_head) * rows + r
        // A strip of at most narrow_strip_rows rows (also the last strip of a wider window) takes
        // row_logits(), as a decode step does: the 8-row tile would leave half its lanes idle, and
        // row_logits() reads the key rows in place (TOVA at 16k tokens: 1.2x faster end to end). Its
        // sums run lane-wise over the dimensions (the bits of a decode step's logits for the same
        // query), the tile's in dimension order. The packing: rows one after another for
        // row_logits(), transposed per tile of `width` rows (zero-padded) for window_logits().
        const bool narrow = rows <= narrow_strip_rows;
        const index_t width = rows <= 8 ? 8 : rows <= 16 ? 16 : detail::tile_rows, padded = narrow ? rows : (rows + width - 1) / width * width;
        for (index_t h = first_head; h < end_head; ++h)
          for (index_t r = 0; r < padded; ++r) {
            const index_t row = (h - first_head) * rows + r;
            const float* q = r < rows ? window.queries + window.offset(sequence, in_window.layer, h * group_size + r % group_size, first_row + r / group_size,
                                                                       layers, shape_.query_heads, dims)
                                      : nullptr;
            row_positions_[row] = r < rows ? query_positions[first_row + r / group_size] : 0;
            for (index_t d = 0; d < dims; ++d) packed_[narrow ? row * dims + d : (r / width * dims + d) * width + r % width] = q ? q[d] : 0.0f;
          }
        for_each_block(sequence, layer, first_head, end_head, [&](index_t h, index_t first, index_t end) {
          const index_t base = (h - first_head) * rows;
          float* logits = logits_ + base * capacity();
          if (narrow) row_logits(sequence, layer, h, first, end, packed_ + base * dims, rows, false, logits);
          else if (width == 8) window_logits<8>(sequence, layer, h, first, end, rows, logits);
          else if (width == 16) window_logits<16>(sequence, layer, h, first, end, rows, logits);
          else window_logits<detail::tile_rows>(sequence, layer, h, first, end, rows, logits);
          const std::int32_t* positions = positions_of(h);
          block_softmax(logits, rows, first, end, [&](index_t j, index_t r) { return positions[j] <= row_positions_[base + r]; },
                        first / slot_block * pass_rows + base);
        });
        for (index_t h = first_head; h < end_head; ++h)
          for (index_t r = 0; r < rows; ++r) {
            const index_t row = (h - first_head) * rows + r;
            row_counts_[row] = static_cast<std::int32_t>(combine_blocks(row, pass_rows, blocks_of(length_of(sequence, layer, h))));
          }
        for_each_block(sequence, layer, first_head, end_head, [&](index_t h, index_t first, index_t end) {
          const std::int32_t* positions = positions_of(h);
          float* scores = scores_of(h);
          for (index_t r = 0; r < rows; ++r) {  // row order: each query head's window rows in order
            const index_t row = (h - first_head) * rows + r;
            const float factor = block_max_[first / slot_block * pass_rows + row];
            const index_t visible = row_counts_[row], query_position = row_positions_[row];
            const float* exps = logits_ + row * capacity();
            float* acc = scores + r % group_size * capacity();
            for (index_t j = first; j < end; ++j) {
              const float combined = detail::reduction_combine(scorer.rows, acc[j], scorer.row_term(exps[j] * factor, visible, query_position));
              acc[j] = positions[j] <= query_position ? combined : acc[j];
            }
          }
        });
      }
    }
    for (index_t h = 0; h < kv_heads; ++h) {
      float* scores = scores_of(h);
      const index_t length = length_of(sequence, layer, h);
      for (index_t g = 0; g < group_size; ++g)
        for (index_t j = 0; j < length; ++j)
          scores[g * capacity() + j] = detail::reduction_finish(scorer.rows, scores[g * capacity() + j], static_cast<int>(window.rows));
    }
  }

  // Combines per-query-head values (terms[g * capacity + j], g the query head) of the query heads
  // [first_g, first_g + count) into acc[j - first] for the slots [first, end), in query-head order; a
  // slot beyond a head's length contributes 0.
  void combine_heads(index_t sequence, index_t layer, index_t first_g, index_t count, index_t first, index_t end, const float* terms, float* acc) const {
    const auto& scorer = policy_.scorer;
    for (index_t g = first_g; g < first_g + count; ++g) {
      const index_t length = length_of(sequence, layer, g / group()), seen = length < end ? (length > first ? length : first) : end;
      const float* row = terms + g * capacity();
      for (index_t j = first; j < seen; ++j) acc[j - first] = detail::reduction_combine(scorer.group, acc[j - first], row[j]);
      for (index_t j = seen; j < end; ++j) acc[j - first] = detail::reduction_combine(scorer.group, acc[j - first], 0.0f);  // beyond that head's slots
    }
  }

  // Group reduction of per-query-head values (terms[g * capacity + j], g the query head) into one
  // value per slot of KV head h: over its query heads, or over all query heads for scores shared
  // across KV heads (on several ranks: what reduce_across_ranks() left in layer_scores_).
  template <class Use>
  void reduce_group(index_t sequence, index_t layer, index_t h, index_t first, index_t end, const float* terms, const Use& use) const {
    if (Policy::shares_scores_across_kv_heads && ranks_.ranks > 1) {
      for (index_t j = first; j < end; ++j) use(j, layer_scores_[j]);
      return;
    }
    const auto& scorer = policy_.scorer;
    const index_t first_g = Policy::shares_scores_across_kv_heads ? 0 : h * group();
    const index_t count = Policy::shares_scores_across_kv_heads ? shape_.query_heads : group();
    float acc[slot_block];  // one block's slots, reduced over the query heads in order
    for (index_t j = first; j < end; ++j) acc[j - first] = detail::reduction_identity(scorer.group);
    combine_heads(sequence, layer, first_g, count, first, end, terms, acc);
    for (index_t j = first; j < end; ++j) use(j, detail::reduction_finish(scorer.group, acc[j - first], static_cast<int>(count)));
  }

  // Scores shared across KV heads on a tensor-parallel group (nothing to do otherwise): the group
  // reduction of terms (as reduce_group() takes them) over the query heads of every rank, continued
  // rank after rank in the unsharded query-head order (kvcompact::detail::continue_across_ranks), into
  // layer_scores_[j] for every slot j the layer's heads hold on any rank.
  void reduce_across_ranks(index_t sequence, index_t layer, const float* terms) {
    if (!Policy::shares_scores_across_kv_heads || ranks_.ranks == 1) return;
    const auto& scorer = policy_.scorer;
    index_t slots = 0;
    for (index_t h = 0; h < cache_.layout.num_kv_heads(); ++h) slots = length_of(sequence, layer, h) > slots ? length_of(sequence, layer, h) : slots;
    slots = detail::max_across_ranks(ranks_, slots);
    for (index_t j = 0; j < slots; ++j) layer_scores_[j] = detail::reduction_identity(scorer.group);
    detail::continue_across_ranks(&ranks_, layer_scores_, slots, [&] {
      detail::parallel_for(blocks_of(slots), team(), [&](index_t b) {
        const index_t first = b * slot_block, end = first + slot_block < slots ? first + slot_block : slots;
        combine_heads(sequence, layer, 0, shape_.query_heads, first, end, terms, layer_scores_ + first);
      });
    });
    const int model_heads = static_cast<int>(shape_.query_heads * ranks_.ranks);
    for (index_t j = 0; j < slots; ++j) layer_scores_[j] = detail::reduction_finish(scorer.group, layer_scores_[j], model_heads);
  }

  void score_layer(index_t sequence, index_t layer, const query_window& window, window_layer in_window) {
    const index_t kv_heads = cache_.layout.num_kv_heads();
    if constexpr (!Policy::needs_attention) {
      for_each_block(sequence, layer, [&](index_t h, index_t first, index_t end) { score_slot_block(sequence, layer, h, first, end); });
    } else {
      score_window(sequence, layer, window, in_window);
      reduce_across_ranks(sequence, layer, scratch_.query_scores);
      // Scores shared across KV heads reduce every query head of the layer into one value per slot,
      // the same for each KV head (their slots hold the same positions, check_cache_content()):
      // reduced for head 0, copied to the others (8 KV heads: 1/8 of the reads of query_scores).
      const index_t reduced_heads = Policy::shares_scores_across_kv_heads ? 1 : kv_heads;
      for_each_block(sequence, layer, 0, reduced_heads, [&](index_t h, index_t first, index_t end) {
        reduce_group(sequence, layer, h, first, end, scratch_.query_scores, [&](index_t j, float score) { scratch_.scores[h * capacity() + j] = score; });
      });
      for (index_t h = reduced_heads; h < kv_heads; ++h)
        std::memcpy(scratch_.scores + h * capacity(), scratch_.scores, static_cast<std::size_t>(length_of(sequence, layer, h)) * sizeof(float));
    }
    for (index_t h = 0; h < kv_heads; ++h) check_scores(sequence, layer, h);
  }
  // Slot scores of a slot scorer for the slots [first, end) of KV head h, and their per-query-head view.
  void score_slot_block(index_t sequence, index_t layer, index_t h, index_t first, index_t end) {
    float* scores = scratch_.scores + h * capacity();
    for (index_t j = first; j < end; j += score_batch) score_slots(sequence, layer, h, j, end - j < score_batch ? end - j : score_batch, scores + j);
    for (index_t g = h * group(); g < (h + 1) * group(); ++g)  // per-query-head view
      for (index_t j = first; j < end; ++j) scratch_.query_scores[g * capacity() + j] = scores[j];
  }
  // Throws on the first NaN score of KV head h.
  void check_scores(index_t sequence, index_t layer, index_t h) const {
    for (index_t j = 0; j < length_of(sequence, layer, h); ++j)
      if (std::isnan(scratch_.scores[h * capacity() + j]))
        throw error("compress_prefill", "scores",
                    "NaN score at layer " + std::to_string(layer) + " head " + std::to_string(h) + " slot " + std::to_string(j) +
                        " (NaN in keys or queries?)");
  }
  // Slot scores of `count` (at most score_batch) consecutive slots from `first` of KV head h into
  // scores[0, count): one slot_scores() call (the scorer's batched definition of its score) for a full
  // batch when the scorer scores batches, slot_score() per slot otherwise.
  void score_slots(index_t sequence, index_t layer, index_t h, index_t first, index_t count, float* scores) const {
    if constexpr (detail::scores_slot_batches<typename Policy::scorer_type>) {
      if (count == score_batch) {
        index_t rows[score_batch], positions[score_batch];
        for (index_t i = 0; i < score_batch; ++i) {
          rows[i] = cache_.layout.offset(sequence, layer, h, first + i);
          positions[i] = position_of(sequence, layer, h, first + i);
        }
        const index_t stride = cache_.layout.dim_stride();
        auto keys = [&](int i, index_t d) { return to_float(cache_.keys[rows[i] + d * stride]); };
        policy_.scorer.template slot_scores<score_batch>(keys, head_dim(), positions, scores);
        return;
      }
    }
    for (index_t i = 0; i < count; ++i) scores[i] = detail::slot_score(policy_, cache_, sequence, layer, h, first + i);
  }

  // Whether compress_layer() runs each KV head from scoring to compaction before the next: a slot
  // scorer (its scores read the head's own keys) and a selector that decides each head on its own.
  // Compaction then finds the head's keys still in the L3 cache from scoring (KNorm at 16k tokens, fp32
  // keys of 8 MiB a head); scoring every head first evicted them. Keep-sets are the same either way.
  static constexpr bool compresses_each_head = !Policy::needs_attention && detail::selects_each_head<typename Policy::selector_type>;

  // Scores, selects, merges and compacts one layer of a sequence (in rounds of heads when compresses_each_head).
  void compress_layer(index_t sequence, index_t layer, const query_window& window, window_layer in_window) {
    if constexpr (compresses_each_head) {
      // Rounds of as many heads as threads: the round's heads are scored and selected in parallel (one
      // head per thread), merged in order, then compacted in parallel while their keys are still in
      // the L3 cache (KNorm at 16k tokens on 2 threads: compaction, about half of the time, ran on one
      // thread when each head was scored across the threads and compacted alone). A NaN score or a
      // refused selection throws with the heads before its head compacted (as layers are), as when the
      // heads ran one after another.
      const index_t step = layer_step(sequence, layer);
      layer_context<T, Layout> ctx = context(sequence, layer, step);
      const int round = team();
      for (int first = 0; first < ctx.kv_heads(); first += round) {
        const int end = first + round < ctx.kv_heads() ? first + round : ctx.kv_heads();
        for_each_block(sequence, layer, first, end, [&](index_t h, index_t a, index_t b) { score_slot_block(sequence, layer, h, a, b); });
        auto compact_heads = [&](int last) { detail::parallel_for(last - first, team(), [&](index_t i) { compact(ctx, first + static_cast<int>(i), step); }); };
        const int failed = select_heads(ctx, first, end, /*check_scores_first=*/true);
        int h = first;
        try {
          for (; h < end; ++h) {
            if (h >= failed) {
              check_scores(sequence, layer, h);
              select_one(ctx, h, group_);
            }
            merge_and_budget(ctx, h);
          }
        } catch (...) {
          compact_heads(h);
          throw;
        }
        compact_heads(end);
      }
    } else {
      score_layer(sequence, layer, window, in_window);
      const index_t step = layer_step(sequence, layer);
      layer_context<T, Layout> ctx = context(sequence, layer, step);
      select_prefill(ctx);
      for (int h = 0; h < ctx.kv_heads(); ++h) merge_and_budget(ctx, h);
      // The heads compact in parallel (each moves only its own slots): at 16k tokens the kept rows come
      // from memory (scoring read every head's keys since), and a second thread's loads add bandwidth.
      detail::parallel_for(ctx.kv_heads(), team(), [&](index_t h) { compact(ctx, static_cast<int>(h), step); });
    }
  }

  // The layer's newest position over its heads (and over every rank's heads).
  index_t layer_step(index_t sequence, index_t layer) const {
    index_t step = 0;
    for (index_t h = 0; h < cache_.layout.num_kv_heads(); ++h)
      for (index_t j = 0; j < length_of(sequence, layer, h); ++j) step = position_of(sequence, layer, h, j) > step ? position_of(sequence, layer, h, j) : step;
    return ranks_.ranks > 1 ? detail::max_across_ranks(ranks_, step) : step;
  }

  // Prefill selection of a scored layer. Where the scores are shared across KV heads (the heads hold
  // the same positions, check_cache_content(), and the same scores) and the selector keeps the same
  // slots of such heads (detail::same_for_equal_heads, head scope), head 0 is selected and its verdicts
  // copied to the others: TOVA over 8 KV heads ran the same top-k 8 times (16k tokens: 1.3 ms of its
  // 14 ms, 2026-12-02, 2-vCPU EPYC).
  void select_prefill(const layer_context<T, Layout>& ctx) {
    if constexpr (Policy::shares_scores_across_kv_heads && detail::selects_each_head<typename Policy::selector_type>) {
      if (detail::same_for_equal_heads(policy_.selector)) {
        select_one(ctx, 0, group_);
        for (int h = 1; h < ctx.kv_heads(); ++h)
          for (index_t j = 0; j < ctx.length(h); ++j) {
            ctx.keep(h, j, ctx.kept(0, j));
            ctx.set_target(h, j, ctx.target(0, j));
          }
        return;
      }
    }
    if constexpr (detail::selects_each_head<typename Policy::selector_type>) {
      for (int h = select_heads(ctx, 0, ctx.kv_heads(), /*check_scores_first=*/false); h < ctx.kv_heads(); ++h)
        select_one(ctx, h, group_);  // score_layer() checked the scores
    } else {
      for (int h = 0; h < ctx.kv_heads(); ++h) clear_verdicts(ctx, h);
      detail::select_layer(group_, policy_.selector, ctx, ranking_);
    }
  }

  // Prefill selection of the KV heads [first, end) of a head-scope selector (each head decided from its
  // own slots, detail::select_head) in parallel: one head per item, with its own slice of the selection
  // scratch (a sequential_group of capacity() keys; the layer's group_ holds every head's). Selecting a
  // head costs about as much as scoring its keys (KNorm at 16k tokens: 0.15 ms a head), and one thread
  // selecting while the others waited left a round's second core idle. With @p check_scores_first each
  // head's scores are checked for NaN before its selection (the rounds of compress_layer(); score_layer()
  // checks a whole layer's). A head that throws (a NaN score, a refused selection) is not selected:
  // @return the first such head, or @p end. The caller selects the heads from there on one by one, in
  // order, so that head throws for it as a run head by head would, with the same heads before it
  // selected and merged; verdicts do not depend on the thread count.
  int select_heads(const layer_context<T, Layout>& ctx, int first, int end, bool check_scores_first) const {
    std::atomic<int> failed{end};
    detail::parallel_for(end - first, team(), [&](index_t i) {
      const int h = first + static_cast<int>(i);
      try {
        if (check_scores_first) check_scores(ctx.sequence(), ctx.layer(), h);
        select_one(ctx, h, detail::sequential_group(selection_keys_ + h * capacity(), capacity()));
      } catch (...) {
        for (int seen = failed.load(); h < seen && !failed.compare_exchange_weak(seen, h);) {
        }
      }
    });
    return failed.load();
  }

  // Prefill selection of KV head h of a head-scope selector by @p group: its slots cleared, then
  // detail::select_head().
  void select_one(const layer_context<T, Layout>& ctx, int h, const detail::sequential_group& group) const {
    clear_verdicts(ctx, h);
    detail::select_head(group, policy_.selector, ctx, h);
  }

  // Before selection: every slot of head h not kept, without a merge target.
  static void clear_verdicts(const layer_context<T, Layout>& ctx, int h) {
    for (index_t j = 0; j < ctx.length(h); ++j) {
      ctx.keep(h, j, false);
      ctx.set_target(h, j, -1);
    }
  }

  // After selection: merges head h and sets its decode budget.
  void merge_and_budget(layer_context<T, Layout>& ctx, int h) {
    detail::merge_head(group_, policy_.merger, ctx, h);
    const index_t head = cache_.head_index(ctx.sequence(), ctx.layer(), h);
    budgets_[head] = static_cast<std::int32_t>(policy_.selector.budget(ctx.layer(), cache_.layout.num_layers(), ctx.length(h)));
  }

  // Moves kept slots to the front, keeping their relative slot order (ascending position after a
  // prefill), copying K/V bit-identically, one run of consecutive kept slots at a time; the decode
  // state starts from the prefill score. The kept slots are first listed in slot order
  // (ctx.index_scratch(h, 1), free once the head is selected and merged) by a pass without a branch
  // per slot: a prefill's keep flags are scattered, and the branches on them mispredicted in every
  // pass that scanned them (the run search and the prefetch lookahead each scanned all n flags).
  // The K/V rows of the next compact_prefetch_slots kept slots beyond the current run are prefetched
  // into L2 (contiguous rows): the kept rows are scattered, and without it each run's rows came from
  // memory only when its copy asked for them (a long run's copy streams by itself). Prefetching into
  // L1 instead filled its miss buffers, and the prefetches themselves stalled (the kept quarter of 8
  // heads x 16k rows of K and V, 2026-12-02, 2-vCPU EPYC: 6.3-6.6 -> 5.1 ms with memmove copies).
  void compact(layer_context<T, Layout>& ctx, int h, index_t step) const {
    const index_t head = cache_.head_index(ctx.sequence(), ctx.layer(), h), n = ctx.length(h);
    const float* scores = scratch_.scores + h * capacity();
    state_type* states = slot_state_ + head * capacity();
    std::int32_t* kept_slots = ctx.index_scratch(h, 1);
    index_t kept = 0;
    for (index_t j = 0; j < n; ++j) {
      kept_slots[kept] = static_cast<std::int32_t>(j);
      kept += ctx.kept(h, j) ? 1 : 0;
    }
    const std::size_t row_bytes = cache_.layout.dim_stride() == 1 ? static_cast<std::size_t>(head_dim()) * sizeof(T) : 0;
    index_t ahead = 0;  // the next kept slot (index into kept_slots) the prefetch looks at
    auto prefetch_until = [&](index_t end) {
      for (end = end < kept ? end : kept; ahead < end; ++ahead) {
        const index_t row = cache_.layout.offset(ctx.sequence(), ctx.layer(), h, kept_slots[ahead]);
        detail::prefetch_bytes_to_l2(cache_.keys + row, row_bytes);
        detail::prefetch_bytes_to_l2(cache_.values + row, row_bytes);
      }
    };
    prefetch_until(compact_prefetch_slots);
    for (index_t to = 0; to < kept;) {
      const index_t from = kept_slots[to];
      index_t end = to + 1;  // kept_slots[to, end) is a run of consecutive slots
      while (end < kept && kept_slots[end] == from + (end - to)) ++end;
      ahead = ahead > end ? ahead : end;  // a long run streams by itself: keep the lookahead beyond it, no deeper
      prefetch_until(ahead + (end - to < compact_prefetch_slots ? end - to : compact_prefetch_slots));
      if (from != to) detail::move_slots(cache_, slot_state_, ctx.sequence(), ctx.layer(), h, from, to, end - to);
      for (index_t i = 0; i < end - to; ++i) states[to + i] = policy_.scorer.state_from_prefill(scores[from + i], ctx.position(h, to + i), step);
      to = end;
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

  // Logits of `rows` query rows (row r at queries + r * head_dim) against the keys [first, end) of KV
  // head h (logits[r * capacity + j], times the scale), each key row read once for all of them, in
  // place: 4 rows per pass over the key row, their lane sums in registers (detail::dot_rows). Serves a
  // decode step (the group's query heads) and window strips of at most narrow_strip_rows rows.
  // Contiguous rows are prefetched: the key row prefetch_rows ahead and, with @p prefetch_values, the
  // value row of the same slot (which value_rows() reads next), so the streams stay in flight while
  // the arithmetic runs (without it, memory and arithmetic took turns: perf, and the L2-resident step
  // cost as much as the stream).
  void row_logits(index_t sequence, index_t layer, index_t h, index_t first, index_t end, const float* queries, index_t rows, bool prefetch_values,
                  float* logits) const {
    const index_t dims = head_dim();
    float buffer[detail::row_chunk];
    const std::size_t row_bytes = cache_.layout.dim_stride() == 1 ? static_cast<std::size_t>(dims) * sizeof(T) : 0;
    for (index_t j = first; j < end; ++j) {
      const T* key = cache_.keys + cache_.layout.offset(sequence, layer, h, j);
      if (j + prefetch_rows < end) detail::prefetch_bytes_to_l2(cache_.keys + cache_.layout.offset(sequence, layer, h, j + prefetch_rows), row_bytes);
      if (prefetch_values) detail::prefetch_bytes_to_l2(cache_.values + cache_.layout.offset(sequence, layer, h, j), row_bytes);
      for (index_t r0 = 0; r0 < rows; r0 += 4) {
        auto rows_of_pass = [&]<int R>(std::integral_constant<int, R>) {
          detail::lane_vectors sums[R] = {};
          const float* q[R];
          for (int r = 0; r < R; ++r) q[r] = queries + (r0 + r) * dims;
          for (index_t d = 0; d < dims; d += detail::row_chunk) {
            const index_t chunk = dims - d < detail::row_chunk ? dims - d : detail::row_chunk;
            const float* shifted[R];
            for (int r = 0; r < R; ++r) shifted[r] = q[r] + d;
            detail::dot_rows<R>(shifted, detail::load_row(key, cache_.layout.dim_stride(), d, chunk, buffer), chunk, sums);
          }
          for (int r = 0; r < R; ++r) logits[(r0 + r) * capacity() + j] = detail::sum_lanes(sums[r]) * scale_;
        };
        dispatch_rows(rows - r0, rows_of_pass);
      }
    }
  }

  // partial[g * head_dim + d] = sum over the slots [first, end) of weights[g * capacity + j] times
  // value row j, for the group's query heads: the value rows are read once, in slot order (a
  // sequential stream), value_run rows at a time (in L1), each added to every query head's sum in slot
  // order (detail::weighted_rows, the sums in registers over the run); zero weights (masked slots) are
  // skipped, so a masked slot's value never reaches the output.
  void value_rows(index_t sequence, index_t layer, index_t h, index_t first, index_t end, const float* weights, float* partial) const {
    const index_t group_size = group(), dims = head_dim();
    for (index_t i = 0; i < group_size * dims; ++i) partial[i] = 0.0f;
    float buffer[value_run][detail::row_chunk];
    for (index_t run = first; run < end; run += value_run) {
      const index_t count = end - run < value_run ? end - run : value_run;
      for (index_t d = 0; d < dims; d += detail::row_chunk) {
        const index_t width = dims - d < detail::row_chunk ? dims - d : detail::row_chunk;
        const float* rows[value_run];
        for (index_t i = 0; i < count; ++i)
          rows[i] = detail::load_row(cache_.values + cache_.layout.offset(sequence, layer, h, run + i), cache_.layout.dim_stride(), d, width, buffer[i]);
        for (index_t g0 = 0; g0 < group_size; g0 += 4)
          dispatch_rows(group_size - g0, [&]<int R>(std::integral_constant<int, R>) {
            float* out[R];
            const float* w[R];
            for (int r = 0; r < R; ++r) {
              out[r] = partial + (g0 + r) * dims + d;
              w[r] = weights + (g0 + r) * capacity() + run;
            }
            detail::weighted_rows<R>(out, w, rows, count, width);
          });
      }
    }
  }

  // Calls rows(integral_constant<int, R>) with R = min(count, 4).
  template <class Rows>
  static void dispatch_rows(index_t count, const Rows& rows) {
    if (count >= 4) rows(std::integral_constant<int, 4>{});
    else if (count == 3) rows(std::integral_constant<int, 3>{});
    else if (count == 2) rows(std::integral_constant<int, 2>{});
    else rows(std::integral_constant<int, 1>{});
  }

  // Decode attention in one pass over each KV head's slots (blocks of slot_block in parallel): the
  // group's logits, a per-block softmax and, for attend(), the probability-weighted value rows; the
  // blocks are then combined in block order. Attention scorers then fold the group-reduced
  // probabilities into the slot states (a pass over the logit buffer, not over K or V).
  void run_attention(index_t sequence, index_t layer, const float* queries, index_t position, float* output) {
    detail::require(queries != nullptr, output ? "attend" : "observe", "queries", "null pointer");
    if constexpr (layer_mapped_layout<Layout>)
      detail::require(layer >= 0 && layer < cache_.layout.num_model_layers(), output ? "attend" : "observe", "layer", "out of range");
    const index_t storage = detail::storage_layer_of(cache_.layout, layer);
    check_indices(output ? "attend" : "observe", sequence, storage);
    if (!output && !Policy::needs_attention) return;  // nothing to observe
    const auto& scorer = policy_.scorer;
    const index_t group_size = group(), dims = head_dim(), per_head = blocks_of(capacity());
    auto positions = [&](index_t h) { return cache_.positions + cache_.slot_index(sequence, storage, h, 0); };
    auto visible = [&](index_t key_position) { return detail::attends(cache_.layout, layer, key_position, position); };
    auto logits = [&](index_t h) { return logits_ + h * capacity() * group_size; };
    auto stats = [&](index_t h, index_t b) { return (h * per_head + b) * group_size; };  // stats index of a block's first row
    // The queries are read once per key row: from a cache-line-aligned copy none of their loads splits
    // a line (a caller's buffer need not be 64-byte aligned; split loads slowed the step by ~6 %).
    std::memcpy(packed_, queries, static_cast<std::size_t>(shape_.query_heads * dims) * sizeof(float));
    for_each_block(sequence, storage, [&](index_t h, index_t first, index_t end) {
      const index_t b = first / slot_block;
      row_logits(sequence, storage, h, first, end, packed_ + h * group_size * dims, group_size, output != nullptr, logits(h));
      const std::int32_t* slot_positions = positions(h);
      block_softmax(logits(h), group_size, first, end, [&](index_t j, index_t) { return visible(slot_positions[j]); }, stats(h, b));
      if (!output) return;
      value_rows(sequence, storage, h, first, end, logits(h), partial_output_ + stats(h, b) * dims);
    });
    detail::parallel_for(shape_.query_heads, team(), [&](index_t query_head) {
      const index_t h = query_head / group_size, g = query_head % group_size, blocks = blocks_of(length_of(sequence, storage, h));
      row_counts_[query_head] = static_cast<std::int32_t>(combine_blocks(stats(h, 0) + g, group_size, blocks));
      if (!output) return;
      float* out = output + query_head * dims;
      for (index_t d = 0; d < dims; ++d) out[d] = 0.0f;
      for (index_t b = 0; b < blocks; ++b)
        if (block_max_[stats(h, b) + g] != 0.0f) detail::add_scaled(out, block_max_[stats(h, b) + g], partial_output_ + (stats(h, b) + g) * dims, dims);
    });
    if constexpr (Policy::needs_attention) {
      for_each_block(sequence, storage, [&](index_t h, index_t first, index_t end) {
        const std::int32_t* slot_positions = positions(h);
        for (index_t g = 0; g < group_size; ++g) {
          const float factor = block_max_[stats(h, first / slot_block) + g];
          const index_t count = row_counts_[h * group_size + g];
          float* terms = logits(h) + g * capacity();
          for (index_t j = first; j < end; ++j) terms[j] = visible(slot_positions[j]) ? scorer.row_term(terms[j] * factor, count, position) : 0.0f;
        }
      });
      reduce_across_ranks(sequence, storage, logits_);
      for_each_block(sequence, storage, [&](index_t h, index_t first, index_t end) {
        const std::int32_t* slot_positions = positions(h);
        state_type* states = slot_state_ + cache_.slot_index(sequence, storage, h, 0);
        reduce_group(sequence, storage, h, first, end, logits_, [&](index_t j, float term) {
          if (visible(slot_positions[j])) scorer.observe(states[j], term, position);
        });
      });
    }
  }
  Policy policy_;
  kv_cache<T, Layout> cache_;
  attention_shape shape_;
  float scale_ = 1.0f;
  state_type* slot_state_ = nullptr;
  std::int32_t* budgets_ = nullptr;
  int threads_ = 0;
  layer_scratch scratch_{};
  float* layer_scores_ = nullptr;          // [capacity] scores shared across KV heads, over every rank (reduce_across_ranks())
  float* logits_ = nullptr;                // [strip_capacity][capacity] logits, then exps, then row terms
  float* packed_ = nullptr;                // [head_dim][strip_capacity] window queries of one strip, transposed per tile; in decode, the step's queries (cache-line aligned)
  float* block_max_ = nullptr;             // per block and row: maximum logit, then the probability factor
  float* block_sum_ = nullptr;             // per block and row: sum of exps
  float* partial_output_ = nullptr;        // per block and query head: probability-weighted value rows
  std::int32_t* block_count_ = nullptr;    // per block and row: visible slots
  std::int32_t* row_counts_ = nullptr;     // per row: visible slots
  std::int32_t* row_positions_ = nullptr;  // per strip row: the query's position
  std::uint64_t* selection_keys_ = nullptr;     // [kv_heads][capacity] selection scratch (group_'s, or one head's slice)
  detail::sequential_group group_{nullptr, 0};  // the selection stage's one-worker execution group over the whole scratch
  detail::ranked_head* ranking_ = nullptr;        // per KV head: the ranked tier's counts
  bool compressed_ = false;  // compress_prefill() ran
  bool decoding_ = false;    // append() ran
  index_t layers_compressed_ = 0;  // layers compress_prefill_layer() compressed (in order)
  rank_group ranks_{};             // tensor-parallel group (one rank by default)
};

}  // namespace cpu

KVCOMPACT_NAMESPACE_END
