// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The selection contract: the kvcompact::keep_selector concept with its two tiers
/// (kvcompact::ranked_selector, kvcompact::cooperative_selector) and the selection context they work on.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/execution_group.hpp>
#include <kvcompact/layouts/concepts.hpp>
#include <kvcompact/types.hpp>

#include <cmath>
#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Base of the selector tags (a selector declares one of the two tiers below).
struct selector_tag {};
/// @brief Tag of a kvcompact::ranked_selector: `using component_kind = kvcompact::ranked_selector_tag;`.
struct ranked_selector_tag : selector_tag {};
/// @brief Tag of a kvcompact::cooperative_selector: `using component_kind = kvcompact::cooperative_selector_tag;`.
struct cooperative_selector_tag : selector_tag {};

/// @brief What a ranked selector says about one slot.
enum class slot_verdict : std::uint8_t {
  evict,      ///< not kept (at decode: evicted now)
  keep,       ///< kept whatever the ranking says (protected)
  candidate,  ///< ranked by its key against the other candidates
};

/// @brief The unit a selector decides for at prefill.
enum class selection_scope : std::uint8_t {
  head,   ///< each KV head on its own (backends run all heads, layers and sequences in parallel)
  layer,  ///< all KV heads of a layer together. Ranked: a layer-wide ranking followed by a per-head
          ///< allocation (layers in parallel). Cooperative: one call per layer, the layers of a
          ///< sequence in increasing order, so a layer may read what an earlier one left in the
          ///< context's shared store.
};

namespace detail {
/// The members a backend's selection context offers selectors and mergers (one sequence, one
/// storage layer, all its KV heads). Used to check the concepts; backends provide their own type.
struct probe_selection_context {
  KVCOMPACT_HOST_DEVICE int kv_heads() const { return 0; }
  KVCOMPACT_HOST_DEVICE int query_heads() const { return 0; }
  KVCOMPACT_HOST_DEVICE int layer() const { return 0; }
  KVCOMPACT_HOST_DEVICE int num_layers() const { return 0; }
  KVCOMPACT_HOST_DEVICE int sequence() const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t step() const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t head_dim() const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t length(int) const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t position(int, index_t) const { return 0; }
  KVCOMPACT_HOST_DEVICE float score(int, index_t) const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t budget(int) const { return 0; }
  KVCOMPACT_HOST_DEVICE float query_score(int, index_t) const { return 0; }
  KVCOMPACT_HOST_DEVICE bool kept(int, index_t) const { return false; }
  KVCOMPACT_HOST_DEVICE void keep(int, index_t, bool) const {}
  KVCOMPACT_HOST_DEVICE index_t target(int, index_t) const { return -1; }
  KVCOMPACT_HOST_DEVICE void set_target(int, index_t, index_t) const {}
  KVCOMPACT_HOST_DEVICE const std::int32_t* order(int) const { return nullptr; }
  KVCOMPACT_HOST_DEVICE float* float_scratch(int) const { return nullptr; }
  KVCOMPACT_HOST_DEVICE std::int32_t* index_scratch(int, int) const { return nullptr; }
  KVCOMPACT_HOST_DEVICE std::int32_t* shared_store() const { return nullptr; }
  KVCOMPACT_HOST_DEVICE float key(int, index_t, index_t) const { return 0; }
  KVCOMPACT_HOST_DEVICE float value(int, index_t, index_t) const { return 0; }
  KVCOMPACT_HOST_DEVICE void set_key(int, index_t, index_t, float) const {}
  KVCOMPACT_HOST_DEVICE void set_value(int, index_t, index_t, float) const {}
};

/// The candidates of one head as a ranked selector's rank_key() sees them: in position order.
struct probe_candidates {
  KVCOMPACT_HOST_DEVICE index_t count() const { return 0; }
  KVCOMPACT_HOST_DEVICE float score(index_t) const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t position(index_t) const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t slot(index_t) const { return 0; }
  KVCOMPACT_HOST_DEVICE int head() const { return 0; }
};

/// What a layer-scope ranked selector's allocate() sees of its layer.
struct probe_layer_allocation {
  KVCOMPACT_HOST_DEVICE int heads() const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t total() const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t quota(int) const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t share(int) const { return 0; }
  KVCOMPACT_HOST_DEVICE index_t candidates(int) const { return 0; }
};

template <class S>
concept declares_selector = requires { typename S::component_kind; } && std::derived_from<typename S::component_kind, selector_tag>;
template <class S>
concept declares_ranked = declares_selector<S> && std::derived_from<typename S::component_kind, ranked_selector_tag>;
template <class S>
concept declares_cooperative = declares_selector<S> && std::derived_from<typename S::component_kind, cooperative_selector_tag>;
template <class S>
concept declares_scope = requires {
  { S::scope } -> std::convertible_to<selection_scope>;
};
template <class S>
concept selector_has_budget = requires(const S& s) {
  { s.budget(index_t{}, index_t{}, index_t{}) } -> std::convertible_to<index_t>;
};
template <class S>
concept ranked_has_prefill_rule = requires(const S& s, const probe_selection_context& ctx, const probe_candidates& c, int h) {
  { s.verdict(ctx, h, index_t{}) } -> std::convertible_to<slot_verdict>;
  { s.rank_key(c, index_t{}) } -> std::convertible_to<float>;
  { s.keep_count(ctx, h, index_t{}) } -> std::convertible_to<index_t>;
};
template <class S>
concept ranked_has_decode_rule = requires(const S& s, const probe_selection_context& ctx, int h) {
  { s.decode_verdict(ctx, h, index_t{}) } -> std::convertible_to<slot_verdict>;
  { s.decode_evictions(ctx, h) } -> std::convertible_to<index_t>;
};
template <class S>
concept ranked_has_allocation = S::scope != selection_scope::layer ||
                                requires(const S& s, const probe_selection_context& ctx, const probe_layer_allocation& layer, int h) {
                                  { s.allocate(ctx, layer, h) } -> std::convertible_to<index_t>;
                                };
template <class S>
concept cooperative_has_select =
    (S::scope == selection_scope::head && requires(const S& s, probe_group& g, probe_selection_context& ctx, int h) { s.select(g, ctx, h); }) ||
    (S::scope == selection_scope::layer && requires(const S& s, probe_group& g, probe_selection_context& ctx) { s.select(g, ctx); });
template <class S>
concept cooperative_has_decode = requires(const S& s, probe_group& g, probe_selection_context& ctx, int h) { s.select_decode(g, ctx, h); };
}  // namespace detail

/// @brief Ranked tier: a declarative selector whose ranking the backend runs (fully parallel).
///
/// Requirements on a type `S` (member functions `KVCOMPACT_HOST_DEVICE` and const; `ctx` is the
/// selection context, see kvcompact::detail::probe_selection_context, read-only here):
/// 1. `using component_kind = kvcompact::ranked_selector_tag;`
/// 2. `static constexpr kvcompact::selection_scope scope`: `head`, or `layer` for a layer-wide
///    ranking followed by a per-head allocation;
/// 3. `budget(layer, num_layers, length)`: the slots a head keeps, used for decode budgets;
/// 4. `verdict(ctx, head, slot)` -> kvcompact::slot_verdict: prefill decision of one slot, independent
///    of the other slots (may read the head's length, the slot's score and position, the step);
/// 5. `rank_key(candidates, i)` -> float: the key of candidate i; `candidates` lists a head's
///    candidates in position order (`count()`, `score(i)`, `position(i)`, `slot(i)`, `head()`) so a key
///    may pool neighbouring candidates; the backend keeps higher keys first, lower positions on ties;
/// 6. `keep_count(ctx, head, protected_count)`: how many candidates the head keeps (its quota);
/// 7. `decode_verdict(ctx, head, slot)` and `decode_evictions(ctx, head)`: decode-time eviction
///    before the token at `ctx.step()` is inserted (scores are decode scores): slots judged `evict`
///    go, and of the candidates the `decode_evictions` lowest-ranked go too (lowest key first, the
///    higher position first among equal keys);
/// 8. layer scope only: `allocate(ctx, layer, head)` -> the head's allocation, given the layer's
///    `total()` (sum of the quotas), each head's `quota(h)`, `candidates(h)` and `share(h)` (how many
///    of its candidates are among the layer's `total()` best: higher key first, then lower head
///    index, then lower position); the head keeps its best `allocate(...)` candidates;
/// 9. trivially copyable.
///
/// Optional members: `key_floor()` (float; candidates whose key is below it are never kept, default
/// none), `local_keys()` (bool; true when rank_key(c, i) reads only candidate i, which lets decode
/// eviction skip the position order, default false), `exact_total()` (bool, layer scope; true moves
/// single slots between heads until the allocations sum to the layer total: from the head whose last
/// allocated candidate ranks worst, to the head whose next candidate ranks best, default false),
/// `same_for_equal_heads()` (bool, head scope; true when a head's prefill verdicts, keys and quota
/// follow from its scores, positions and length, the layer and the step alone, never from which head
/// it is: heads holding the same positions and scores then keep the same slots, and the CPU backend
/// selects once for a layer whose scores are shared across its KV heads, default false).
///
/// Example: a threshold selector (compiled and tested by test/unit/user_components.cpp):
/// @snippet user_components.cpp selector
template <class S>
concept ranked_selector = detail::declares_ranked<S> && detail::declares_scope<S> && detail::selector_has_budget<S> &&
                          detail::ranked_has_prefill_rule<S> && detail::ranked_has_decode_rule<S> && detail::ranked_has_allocation<S> &&
                          std::is_trivially_copyable_v<S>;

/// @brief Cooperative tier: a selector written as group code (kvcompact::execution_group), run by one
/// worker on the CPU and by the threads of a block on the GPU.
///
/// Requirements on a type `S` (member functions `KVCOMPACT_HOST_DEVICE` and const):
/// 1. `using component_kind = kvcompact::cooperative_selector_tag;`
/// 2. `static constexpr kvcompact::selection_scope scope`;
/// 3. `budget(layer, num_layers, length)`: the slots a head keeps, used for decode budgets;
/// 4. prefill: `select(group, ctx, head)` (head scope) or `select(group, ctx)` (layer scope): every
///    slot starts not kept without a merge target; mark the keep-set with `ctx.keep(head, slot, true)`
///    and optionally merge targets with `ctx.set_target(head, slot, pivot)`. `ctx.order(head)` is ready.
///    Head scope: touch only that head's entries of the context (its flags and targets,
///    `float_scratch(head)`, `index_scratch(head, i)`); both backends select a layer's heads concurrently;
/// 5. `select_decode(group, ctx, head)`: decode-time eviction before a new token is inserted; every
///    slot starts kept, clear the victims' flags (none when the head is under budget);
/// 6. trivially copyable.
template <class S>
concept cooperative_selector = detail::declares_cooperative<S> && detail::declares_scope<S> && detail::selector_has_budget<S> &&
                               detail::cooperative_has_select<S> && detail::cooperative_has_decode<S> && std::is_trivially_copyable_v<S>;

/// @brief A keep-set selector under a budget: a kvcompact::ranked_selector or a
/// kvcompact::cooperative_selector.
template <class S>
concept keep_selector = ranked_selector<S> || cooperative_selector<S>;

namespace detail {
/// Static-assert ladder naming the first requirement of keep_selector that @p S misses.
template <class S>
constexpr bool check_selector() {
  constexpr bool tagged = declares_selector<S>;
  constexpr bool tiered = declares_ranked<S> || declares_cooperative<S>;
  constexpr bool scoped = tiered && declares_scope<S>;
  constexpr bool budgeted = scoped && selector_has_budget<S>;
  static_assert(tagged,
                "kvcompact: the selector type must declare  using component_kind = kvcompact::ranked_selector_tag;  or  "
                "kvcompact::cooperative_selector_tag;");
  static_assert(!tagged || tiered,
                "kvcompact: the selector must choose its tier: component_kind = kvcompact::ranked_selector_tag or "
                "kvcompact::cooperative_selector_tag (selector_tag alone is not enough)");
  static_assert(!tiered || scoped, "kvcompact: the selector lacks  static constexpr kvcompact::selection_scope scope");
  static_assert(!scoped || budgeted, "kvcompact: the selector lacks budget(layer, num_layers, length)");
  if constexpr (budgeted && declares_ranked<S>) {
    static_assert(ranked_has_prefill_rule<S>,
                  "kvcompact: the ranked selector lacks verdict(context, head, slot), rank_key(candidates, i) or keep_count(context, head, protected)");
    static_assert(!ranked_has_prefill_rule<S> || ranked_has_decode_rule<S>,
                  "kvcompact: the ranked selector lacks decode_verdict(context, head, slot) or decode_evictions(context, head)");
    static_assert(!(ranked_has_prefill_rule<S> && ranked_has_decode_rule<S>) || ranked_has_allocation<S>,
                  "kvcompact: a ranked selector of layer scope needs allocate(context, layer, head)");
  }
  if constexpr (budgeted && declares_cooperative<S>) {
    static_assert(cooperative_has_select<S>,
                  "kvcompact: the cooperative selector lacks select(group, context, head) (head scope) or select(group, context) (layer scope)");
    static_assert(!cooperative_has_select<S> || cooperative_has_decode<S>, "kvcompact: the cooperative selector lacks select_decode(group, context, head)");
  }
  constexpr bool ranked_complete = budgeted && declares_ranked<S> && ranked_has_prefill_rule<S> && ranked_has_decode_rule<S> && ranked_has_allocation<S>;
  constexpr bool cooperative_complete = budgeted && declares_cooperative<S> && cooperative_has_select<S> && cooperative_has_decode<S>;
  static_assert(!(ranked_complete || cooperative_complete) || std::is_trivially_copyable_v<S>, "kvcompact: the selector type must be trivially copyable");
  return keep_selector<S>;
}

/// Throws kvcompact::error (argument "policy") when the selector's schedule refuses the cache's layer
/// count (a schedule's optional `validate(num_layers, where)`, e.g. kvcompact::budgets::layer_table) or
/// when its budget of some storage layer exceeds that layer's capacity: such a budget can never be
/// held. A budget above a head's current length is fine (a short prompt is simply not compressed).
template <class Selector, class Layout>
void require_budgets_fit(const Selector& selector, const Layout& layout, const char* where) {
  if constexpr (requires { &std::remove_cvref_t<decltype(selector.schedule)>::validate; })
    static_assert(requires { selector.schedule.validate(index_t{}, where); },
                  "kvcompact: a budget schedule's validate must be callable as validate(num_layers, where)");
  const index_t layers = layout.num_layers();
  if constexpr (requires { selector.schedule.validate(layers, where); }) selector.schedule.validate(layers, where);
  for (index_t l = 0; l < layers; ++l) {
    const index_t capacity = layer_capacity(layout, l);
    const index_t budget = selector.budget(l, layers, capacity);
    require(budget <= capacity, where, "policy", [&] {
      return "the selector's budget of layer " + std::to_string(l) + " is " + std::to_string(budget) + " slots per head, above the cache's capacity " +
             std::to_string(capacity);
    });
  }
}

/// True when a slot at @p position is protected: one of the first @p sinks tokens or of the @p recent newest (up to @p step).
KVCOMPACT_HOST_DEVICE inline bool is_protected(index_t position, index_t step, index_t sinks, index_t recent) {
  return position < sinks || position > step - recent;
}

/// Better-first order of candidates: higher score, then lower position (docs/methods.md P5).
KVCOMPACT_HOST_DEVICE inline bool ranks_before(float score_a, index_t position_a, float score_b, index_t position_b) {
  return score_a > score_b || (score_a == score_b && position_a < position_b);
}

/// A ranked selector's key floor: its key_floor() when it has one, else no floor.
template <class S>
KVCOMPACT_HOST_DEVICE float key_floor(const S& selector) {
  if constexpr (requires { selector.key_floor(); }) return selector.key_floor();
  else return -INFINITY;
}

/// Whether a ranked selector's rank_key(c, i) reads only candidate i (its local_keys(), default false).
template <class S>
KVCOMPACT_HOST_DEVICE bool local_keys(const S& selector) {
  if constexpr (requires { selector.local_keys(); }) return selector.local_keys();
  else return false;
}

/// Whether a head-scope ranked selector keeps the same slots of heads holding the same positions and
/// scores (its same_for_equal_heads(), default false).
template <class S>
KVCOMPACT_HOST_DEVICE bool same_for_equal_heads(const S& selector) {
  if constexpr (requires { selector.same_for_equal_heads(); }) return selector.same_for_equal_heads();
  else return false;
}

/// Whether a layer-scope ranked selector wants its allocations to sum to the layer total (its exact_total(), default false).
template <class S>
KVCOMPACT_HOST_DEVICE bool exact_total(const S& selector) {
  if constexpr (requires { selector.exact_total(); }) return selector.exact_total();
  else return false;
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
