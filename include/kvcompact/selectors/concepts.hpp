// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The kvcompact::keep_selector concept and the selection context it works on.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>
#include <kvcompact/types.hpp>

#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Tag a selector derives its `component_kind` from (opt-in to kvcompact::keep_selector).
struct selector_tag {};

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

template <class S>
concept declares_selector = requires { typename S::component_kind; } && std::derived_from<typename S::component_kind, selector_tag>;
template <class S>
concept selector_has_select = requires(const S& s, probe_selection_context& ctx, int h) {
  s.select(ctx);
  s.select_decode(ctx, h);
  { s.budget(0, 0, index_t{}) } -> std::convertible_to<index_t>;
};
}  // namespace detail

/// @brief A keep-set selector under a budget.
///
/// Requirements on a type `S` (all member functions `KVCOMPACT_HOST_DEVICE` and const):
/// 1. `using component_kind = kvcompact::selector_tag;` (opt-in);
/// 2. `select(ctx)`: prefill selection for one sequence and storage layer, all KV heads; every
///    slot starts not kept, the selector marks the keep-set with `ctx.keep(head, slot, true)` and may
///    assign merge targets with `ctx.set_target(head, slot, pivot)`;
/// 3. `select_decode(ctx, head)`: decode-time eviction before a new token is inserted; every slot
///    starts kept and the selector clears the victims (none when the head is under budget);
/// 4. `budget(layer, num_layers, length)`: the slots a head keeps, used for decode budgets;
/// 5. trivially copyable.
///
/// The context is described by kvcompact::detail::probe_selection_context: lengths, positions, scores,
/// keys, values, keep flags, merge targets, slots in position order and scratch space.
///
/// Example: a threshold selector (compiled and tested by test/unit/user_components.cpp):
/// @snippet user_components.cpp selector
template <class S>
concept keep_selector = detail::declares_selector<S> && detail::selector_has_select<S> && std::is_trivially_copyable_v<S>;

namespace detail {
/// Static-assert ladder naming the first requirement of keep_selector that @p S misses.
template <class S>
constexpr bool check_selector() {
  static_assert(declares_selector<S>, "kvcompact: the selector type must declare  using component_kind = kvcompact::selector_tag;");
  static_assert(!(declares_selector<S>) || selector_has_select<S>,
                "kvcompact: the selector lacks select(context), select_decode(context, head) or budget(layer, num_layers, length)");
  static_assert(!(declares_selector<S> && selector_has_select<S>) || std::is_trivially_copyable_v<S>, "kvcompact: the selector type must be trivially copyable");
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
}  // namespace detail

KVCOMPACT_NAMESPACE_END
