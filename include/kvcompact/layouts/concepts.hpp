// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The kvcompact::kv_layout concept: how (sequence, layer, kv head, slot, dim) maps to memory.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <concepts>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {
template <class L>
concept layout_has_extents = requires(const L& l) {
  { l.num_sequences() } -> std::convertible_to<index_t>;
  { l.num_layers() } -> std::convertible_to<index_t>;
  { l.num_kv_heads() } -> std::convertible_to<index_t>;
  { l.capacity() } -> std::convertible_to<index_t>;
  { l.head_dim() } -> std::convertible_to<index_t>;
};
template <class L>
concept layout_has_offset = requires(const L& l, index_t i) {
  { l.offset(i, i, i, i) } -> std::convertible_to<index_t>;
  { l.dim_stride() } -> std::convertible_to<index_t>;
};
template <class L>
concept layout_is_trivially_copyable = std::is_trivially_copyable_v<L>;
template <class L>
concept layout_has_validate = requires(const L& l, const char* where) { l.validate(where); };
template <class L>
concept layout_has_validate_extents = requires(const L& l, const char* where) { l.validate_extents(where); };
template <class L>
concept layout_has_slot_check = requires(const L& l, index_t i) {
  { l.slot_in_range(i, i) } -> std::convertible_to<bool>;
};

/// The rule every layout's extents obey, built-in or not: all five are positive, the capacity fits
/// the int32 lengths and positions, and the slot count of the whole cache (sequences x layers x
/// kv_heads x capacity, the size of the positions array) fits kvcompact::index_t.
template <class L>
void require_valid_extents(const L& layout, const char* where) {
  const index_t extents[5] = {layout.num_sequences(), layout.num_layers(), layout.num_kv_heads(), layout.capacity(), layout.head_dim()};
  constexpr const char* names[5] = {"num_sequences()", "num_layers()", "num_kv_heads()", "capacity()", "head_dim()"};
  for (int i = 0; i < 5; ++i)
    if (extents[i] <= 0) throw error(where, "layout", std::string(names[i]) + " is " + std::to_string(extents[i]) + ": every extent must be positive");
  require(extents[3] <= std::numeric_limits<std::int32_t>::max(), where, "layout",
          [&] { return "capacity() " + std::to_string(extents[3]) + " does not fit the int32 lengths and positions"; });
  index_t slots = 1;
  for (int i = 0; i < 4; ++i) {
    require(slots <= std::numeric_limits<index_t>::max() / extents[i], where, "layout",
            "sequences x layers x kv_heads x capacity overflows a 64-bit index");
    slots *= extents[i];
  }
}

/// Checks what a layout can check without reading its own data (device backends): the extents rule,
/// then validate_extents() when the layout has it, else validate().
template <class L>
void validate_layout_extents(const L& layout, const char* where) {
  if constexpr (layout_has_validate_extents<L>) layout.validate_extents(where);
  else if constexpr (layout_has_validate<L>) layout.validate(where);
  require_valid_extents(layout, where);
}

/// Checks a host-readable layout completely: validate() when the layout has it (its own data, a page
/// table say), then the extents rule.
template <class L>
void validate_layout(const L& layout, const char* where) {
  if constexpr (layout_has_validate<L>) layout.validate(where);
  require_valid_extents(layout, where);
}

template <class L>
concept layout_has_layer_capacity = requires(const L& l, index_t i) {
  { l.layer_capacity(i) } -> std::convertible_to<index_t>;
};
template <class L>
concept layout_declares_layer_capacity = requires { &L::layer_capacity; };

/// Slots per head of one storage layer: the layout's own layer_capacity() when its layers differ in
/// size (kvcompact::layouts::ragged_layers), capacity() otherwise.
template <class L>
KVCOMPACT_HOST_DEVICE index_t layer_capacity(const L& layout, index_t layer) {
  if constexpr (layout_has_layer_capacity<L>) return layout.layer_capacity(layer);
  else return layout.capacity();
}

/// Whether a slot of a sequence maps into storage: the layout's own slot_in_range() when it has one.
template <class L>
KVCOMPACT_HOST_DEVICE bool slot_in_range(const L& layout, index_t sequence, index_t slot) {
  if constexpr (layout_has_slot_check<L>) return layout.slot_in_range(sequence, slot);
  else return true;
}
}  // namespace detail

/// @brief A cache layout: maps (sequence, layer, kv head, slot) to the element offset of dimension 0,
/// and dimension d to `d * dim_stride()` beyond it.
///
/// Requirements on a type `L`:
/// 1. `num_sequences()`, `num_layers()` (storage layers), `num_kv_heads()`, `capacity()` (slots
///    addressable per sequence, layer and head) and `head_dim()`, all convertible to kvcompact::index_t;
/// 2. `offset(sequence, layer, kv_head, slot)` and `dim_stride()`, both `KVCOMPACT_HOST_DEVICE`;
/// 3. `L` is trivially copyable, so it can be passed to a kernel by value.
///
/// Every layout's extents must be positive, the capacity must fit an int32 (lengths and positions are
/// int32) and the cache's slot count a kvcompact::index_t; the backends check this for any layout.
/// Optionally `validate(const char* where)` checks the layout's own data (a page table, say) and
/// throws kvcompact::error; the backends call it before they touch memory. It should also reject
/// aliasing: two (sequence, layer, kv head, slot, dim) entries that map to the same element, since
/// compaction rewrites slots in place (the built-in layouts do). A layout whose data may
/// live in device memory also offers `validate_extents(where)` (checks without reading that data,
/// used by the CUDA backend) and `KVCOMPACT_HOST_DEVICE bool slot_in_range(sequence, slot)`, which
/// device kernels test before every access. A layout whose storage layers hold different numbers of
/// slots offers `KVCOMPACT_HOST_DEVICE index_t layer_capacity(layer)` (at most `capacity()`, which
/// then is the largest): the backends never let a head of that layer grow beyond it.
///
/// Example: a user layout, memory order [sequence][slot][layer][kv_head][dim] (compiled and tested by
/// test/unit/user_components.cpp):
/// @snippet user_components.cpp layout
template <class L>
concept kv_layout = detail::layout_has_extents<L> && detail::layout_has_offset<L> && detail::layout_is_trivially_copyable<L>;

namespace detail {
/// Static-assert ladder naming the first requirement of kv_layout that @p L misses.
template <class L>
constexpr bool check_layout() {
  static_assert(layout_has_extents<L>,
                "kvcompact: the layout type lacks one of num_sequences(), num_layers(), num_kv_heads(), capacity(), head_dim()");
  static_assert(!(layout_has_extents<L>) || layout_has_offset<L>, "kvcompact: the layout type lacks offset(sequence, layer, kv_head, slot) or dim_stride()");
  static_assert(!(layout_has_extents<L> && layout_has_offset<L>) || layout_is_trivially_copyable<L>, "kvcompact: the layout type must be trivially copyable (it is passed to kernels by value)");
  static_assert(!layout_declares_layer_capacity<L> || layout_has_layer_capacity<L>,
                "kvcompact: the layout's layer_capacity must be callable as layer_capacity(storage_layer) and return its slots per head");
  return kv_layout<L>;
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
