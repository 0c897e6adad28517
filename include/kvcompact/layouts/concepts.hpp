// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The kvcompact::kv_layout concept: how (sequence, layer, kv head, slot, dim) maps to memory.
#pragma once

#include <kvcompact/types.hpp>

#include <concepts>
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

/// Checks what a layout can check without reading its own data (device backends): validate_extents()
/// when the layout has it, else validate().
template <class L>
void validate_layout_extents(const L& layout, const char* where) {
  if constexpr (layout_has_validate_extents<L>) layout.validate_extents(where);
  else if constexpr (layout_has_validate<L>) layout.validate(where);
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
/// Optionally `validate(const char* where)` checks the layout's own data (a page table, say) and
/// throws kvcompact::error; the backends call it before they touch memory. A layout whose data may
/// live in device memory also offers `validate_extents(where)` (checks without reading that data,
/// used by the CUDA backend) and `KVCOMPACT_HOST_DEVICE bool slot_in_range(sequence, slot)`, which
/// device kernels test before every access.
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
  return kv_layout<L>;
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
