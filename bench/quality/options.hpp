// SPDX-License-Identifier: Apache-2.0
/// @file options.hpp
/// @brief Command-line parsing shared by the bench/quality tools: `--name value` pairs, comma-separated
///        lists, the model path's default and usage errors.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

namespace smollm2 {

/// Prints `tool: why (see the header of tool.cpp)` to stderr and exits with status 2.
/// @param tool the tool's name @param why what is wrong with its command line
[[noreturn]] inline void usage_error(const std::string& tool, const std::string& why) {
    std::fprintf(stderr, "%s: %s (see the header of %s.cpp)\n", tool.c_str(), why.c_str(), tool.c_str());
    std::exit(2);
}

/// @return the model file named by the environment variable KVCOMPACT_SMOLLM2_GGUF, or "" when it is not set.
inline std::string model_path_from_environment() {
    const char* path = std::getenv("KVCOMPACT_SMOLLM2_GGUF");
    return path ? path : "";
}

/// @return the items of the comma-separated @p list, in order.
inline std::vector<std::string> split_list(const std::string& list) {
    std::vector<std::string> items;
    std::stringstream stream(list);
    for (std::string item; std::getline(stream, item, ',');) items.push_back(item);
    return items;
}

/// @return the numbers of the comma-separated @p list, in order.
inline std::vector<double> split_numbers(const std::string& list) {
    std::vector<double> out;
    for (const auto& item : split_list(list)) out.push_back(std::stod(item));
    return out;
}

/// Reads the `--name value` pairs of a command line: calls @p apply(name, value) for each, which returns
/// false for a name it does not know. A name without a value or an unknown name is a usage_error of @p tool.
/// @param tool the tool's name @param argc, argv main's arguments @param apply stores one option
template <class Apply>
void parse_option_pairs(const std::string& tool, int argc, char** argv, const Apply& apply) {
    for (int i = 1; i < argc; i += 2) {
        const std::string name = argv[i];
        if (i + 1 >= argc) usage_error(tool, "missing value for " + name);
        if (!apply(name, std::string(argv[i + 1]))) usage_error(tool, "unknown option " + name);
    }
}

}  // namespace smollm2
