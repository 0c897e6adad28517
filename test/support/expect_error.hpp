// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief expect_error(): a call throws kvcompact::error about a given argument, with a given text in
/// its message.
#pragma once

#include <kvcompact/error.hpp>

#include <boost/test/unit_test.hpp>

#include <exception>
#include <string>

namespace kvtest {

/// @brief Runs @p f and checks it throws kvcompact::error whose argument() is @p argument and whose
/// message contains @p mentions (anything when empty).
template <class F>
void expect_error(F&& f, const std::string& argument, const std::string& mentions = "") {
  try {
    f();
  } catch (const kvcompact::error& e) {
    BOOST_TEST(e.argument() == argument, "argument() is \"" << e.argument() << "\", expected \"" << argument << "\"; what(): " << e.what());
    BOOST_TEST(std::string(e.what()).find(mentions) != std::string::npos, "what() \"" << e.what() << "\" does not mention \"" << mentions << "\"");
    return;
  } catch (const std::exception& e) {
    BOOST_ERROR("expected kvcompact::error about " << argument << ", got: " << e.what());
    return;
  }
  BOOST_ERROR("expected kvcompact::error about " << argument << ", nothing was thrown");
}

}  // namespace kvtest
