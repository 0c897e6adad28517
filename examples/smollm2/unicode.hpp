// SPDX-License-Identifier: Apache-2.0
/// @file unicode.hpp
/// @brief UTF-8 decoding/encoding and the character classes (letter, number,
///        whitespace) needed by the byte-level BPE pre-tokenizer.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "unicode_tables.hpp"

namespace smollm2::unicode {

/// One decoded character with its byte span in the source string.
struct code_point {
    std::uint32_t value;   ///< code point (an invalid byte decodes to itself, 0..255, flagged below)
    std::size_t offset;    ///< byte offset in the source
    std::size_t length;    ///< number of source bytes
    bool valid;            ///< false for a byte that is not part of well-formed UTF-8
};

/// Decodes @p s into code points. Malformed bytes become single invalid entries,
/// so the byte spans always tile the input exactly.
inline std::vector<code_point> decode_utf8(std::string_view s) {
    std::vector<code_point> out;
    out.reserve(s.size());
    std::size_t i = 0;
    while (i < s.size()) {
        const auto b0 = static_cast<unsigned char>(s[i]);
        std::size_t len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xe ? 3 : (b0 >> 3) == 0x1e ? 4 : 0;
        bool ok = len != 0 && i + len <= s.size();
        std::uint32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1fu) : len == 3 ? (b0 & 0x0fu) : (b0 & 0x07u);
        for (std::size_t k = 1; ok && k < len; ++k) {
            const auto b = static_cast<unsigned char>(s[i + k]);
            ok = (b & 0xc0) == 0x80;
            cp = cp << 6 | (b & 0x3fu);
        }
        if (ok) {
            out.push_back({cp, i, len, true});
            i += len;
        } else {
            out.push_back({b0, i, 1, false});
            i += 1;
        }
    }
    return out;
}

/// Appends the UTF-8 encoding of @p cp to @p out.
inline void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xc0 | cp >> 6);
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xe0 | cp >> 12);
        out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
        out += static_cast<char>(0xf0 | cp >> 18);
        out += static_cast<char>(0x80 | (cp >> 12 & 0x3f));
        out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    }
}

namespace detail {
template <std::size_t N>
bool in_ranges(const code_point_range (&table)[N], std::uint32_t cp) {
    auto it = std::upper_bound(std::begin(table), std::end(table), cp,
                               [](std::uint32_t v, const code_point_range& r) { return v < r.first; });
    return it != std::begin(table) && cp <= std::prev(it)->last;
}
}  // namespace detail

/// @return true when @p c is a Unicode letter (\p{L}).
inline bool is_letter(const code_point& c) { return c.valid && detail::in_ranges(letter_ranges, c.value); }
/// @return true when @p c is a Unicode number (\p{N}).
inline bool is_number(const code_point& c) { return c.valid && detail::in_ranges(number_ranges, c.value); }
/// @return true when @p c has the Unicode White_Space property (\s).
inline bool is_whitespace(const code_point& c) {
    if (!c.valid) return false;
    const auto v = c.value;
    return (v >= 0x09 && v <= 0x0d) || v == 0x20 || v == 0x85 || v == 0xa0 || v == 0x1680 ||
           (v >= 0x2000 && v <= 0x200a) || v == 0x2028 || v == 0x2029 || v == 0x202f || v == 0x205f ||
           v == 0x3000;
}

}  // namespace smollm2::unicode
