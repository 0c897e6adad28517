// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Whether a policy can compress a prefill layer by layer (kvcompact::layer_by_layer_prefill_v).
#pragma once

#include <kvcompact/detail/parameter_checks.hpp>
#include <kvcompact/policy.hpp>

#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Whether the sessions' `compress_prefill_layer()` accepts policy @p P, so that an engine can
/// compress each layer as its prefill finishes (holding one layer's window queries).
///
/// True unless the policy's selector shares one decision across the layers of a group (WindowKV's
/// windows), which needs every layer's scores at once: such a policy compresses with
/// `compress_prefill()` after the whole prefill. Engines branch on it at compile time.
/// @tparam P a kvcompact::compression_policy (cv-ref qualifiers ignored)
template <class P>
inline constexpr bool layer_by_layer_prefill_v = [] {
  static_assert(compression_policy<std::remove_cvref_t<P>>,
                "kvcompact: layer_by_layer_prefill_v<P>: P must be a kvcompact::policy<Scorer, Selector, Merger>");
  return !detail::decides_across_layers<typename std::remove_cvref_t<P>::selector_type>;
}();

KVCOMPACT_NAMESPACE_END
