// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The drop merger: evicted entries are discarded.
#pragma once

#include <kvcompact/mergers/concepts.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace mergers {

/// @brief Evicted entries are discarded; backends skip the merge stage entirely.
struct drop {
  using component_kind = merger_tag;      ///< opt-in to kvcompact::entry_merger
  static constexpr bool merges = false;   ///< nothing to do
  /// @brief No-op.
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Group&, Ctx&, int) const {}
};

}  // namespace mergers

KVCOMPACT_NAMESPACE_END
