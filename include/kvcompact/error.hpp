// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The exception type of the host API and the argument-checking helper.
#pragma once

#include <kvcompact/config.hpp>

#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Thrown by every host entry point of kvcompact when an argument is invalid.
///
/// The message starts with the function and the argument name, for example
/// `"compress: budget: 70 exceeds the cache length 64"`.
class error : public std::runtime_error {
 public:
  /// @brief Builds the message "<where>: <argument>: <what>".
  /// @param where the entry point that detected the problem
  /// @param argument the name of the offending argument
  /// @param what what is wrong with it
  error(std::string_view where, std::string_view argument, std::string_view what)
      : std::runtime_error(std::string(where) + ": " + std::string(argument) + ": " + std::string(what)),
        argument_(argument) {}

  /// @brief The name of the argument the message is about.
  /// @return the argument name given at construction
  [[nodiscard]] const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

namespace detail {
/// Throws kvcompact::error unless @p condition holds.
inline void require(bool condition, std::string_view where, std::string_view argument, std::string_view what) {
  if (!condition) throw error(where, argument, what);
}
/// Same, with the message built by `what()` only when the condition fails (no allocation otherwise).
template <class Message>
  requires std::is_invocable_r_v<std::string, const Message&>
void require(bool condition, std::string_view where, std::string_view argument, const Message& what) {
  if (!condition) throw error(where, argument, what());
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
