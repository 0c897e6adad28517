// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief expect_error(f, argument, mentions): f must throw kvcompact::error about @p argument whose
/// message contains @p mentions.
#pragma once

#include <kvcompact/error.hpp>

#include <boost/test/unit_test.hpp>

#include <exception>
#include <string>

namespace kvtest {

/// @brief Runs @p f and checks it throws kvcompact::error whose argument() is @p argument, whose
/// what() names it and contains @p mentions (anything when empty); any other outcome is a test failure.
template <class F>
void expect_error(F&& f, const std::string& argument, const std::string& mentions = "") {
  try {
    f();
  } catch (const kvcompact::error& e) {
    BOOST_TEST(e.argument() == argument, "argument() is \"" << e.argument() << "\", expected \"" << argument << "\"; what(): " << e.what());
    BOOST_TEST(std::string(e.what()).find(argument) != std::string::npos, "what() \"" << e.what() << "\" does not name " << argument);
    BOOST_TEST(std::string(e.what()).find(mentions) != std::string::npos, "what() \"" << e.what() << "\" does not mention \"" << mentions << "\"");
    return;
  } catch (const std::exception& e) {
    BOOST_ERROR("expected kvcompact::error about " << argument << ", got: " << e.what());
    return;
  }
  BOOST_ERROR("expected kvcompact::error about " << argument << ", nothing was thrown");
}

}  // namespace kvtest
