// SPDX-License-Identifier: Apache-2.0
/// @file tokenizer.hpp
/// @brief Byte-level BPE tokenizer ("gpt2" model, "smollm" pre-tokenizer) built
///        from GGUF metadata: special-token splitting, pre-tokenisation
///        (single digits, then the GPT-2 split rules), BPE merges, detokenisation.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gguf.hpp"
#include "unicode.hpp"

namespace smollm2 {

/// Token id type (matches the GGUF vocabulary index).
using token_id = std::int32_t;

/// Byte-level BPE tokenizer.
class tokenizer {
public:
    /// Loads vocabulary, merges, token types and special ids from @p f.
    /// @throws std::runtime_error naming the metadata key for a malformed vocabulary: entries that
    /// are not strings, token types that do not match the tokens, an empty control token (it would
    /// match everywhere), an end-of-sequence id outside the vocabulary
    explicit tokenizer(const gguf::file& f) {
        const auto& model = f.get_string("tokenizer.ggml.model");
        if (model != "gpt2") throw std::runtime_error("tokenizer: unsupported tokenizer model '" + model + "'");
        if (f.has("tokenizer.ggml.pre")) {
            const auto& pre = f.get_string("tokenizer.ggml.pre");
            if (pre != "smollm") throw std::runtime_error("tokenizer: unsupported pre-tokenizer '" + pre + "'");
        }
        const auto& tokens = f.get_strings("tokenizer.ggml.tokens").elements;
        const auto& types = f.get_integers("tokenizer.ggml.token_type").elements;
        if (types.size() != tokens.size())
            throw std::runtime_error("tokenizer: tokenizer.ggml.token_type has " + std::to_string(types.size()) + " entries for " +
                                     std::to_string(tokens.size()) + " tokens");
        if (tokens.size() > static_cast<std::size_t>(std::numeric_limits<token_id>::max()))
            throw std::runtime_error("tokenizer: tokenizer.ggml.tokens holds more tokens than a 32-bit id can name");
        pieces_.reserve(tokens.size());
        for (std::size_t i = 0; i < tokens.size(); ++i) {
            pieces_.push_back(tokens[i].as_string());
            ids_.emplace(pieces_.back(), static_cast<token_id>(i));
            const auto type = types[i].as_uint();
            special_.push_back(type == control_type || type == user_defined_type);
            if (!special_.back()) continue;
            if (pieces_.back().empty())
                throw std::runtime_error("tokenizer: control token " + std::to_string(i) + " has empty text (it would match everywhere)");
            special_ids_.push_back(static_cast<token_id>(i));
        }
        const auto& merges = f.get_strings("tokenizer.ggml.merges").elements;
        for (std::size_t r = 0; r < merges.size(); ++r) merge_rank_.emplace(merges[r].as_string(), static_cast<int>(r));
        const std::uint64_t eos = f.get_uint("tokenizer.ggml.eos_token_id");
        if (eos >= tokens.size())
            throw std::runtime_error("tokenizer: tokenizer.ggml.eos_token_id " + std::to_string(eos) + " is outside the " + std::to_string(tokens.size()) +
                                     "-token vocabulary");
        eos_ = static_cast<token_id>(eos);
        build_byte_maps();
    }

    /// @return end-of-sequence id (<|im_end|> for SmolLM2-Instruct).
    token_id eos() const { return eos_; }
    /// @return the id of the exact vocabulary entry @p piece; throws if absent.
    token_id id_of(std::string_view piece) const {
        auto it = ids_.find(std::string(piece));
        if (it == ids_.end()) throw std::runtime_error("tokenizer: no token '" + std::string(piece) + "'");
        return it->second;
    }

    /// Tokenises @p text. When @p parse_special is true, occurrences of the text
    /// of control tokens (e.g. "<|im_start|>") become those tokens.
    std::vector<token_id> encode(std::string_view text, bool parse_special = true) const {
        std::vector<token_id> out;
        std::size_t start = 0;
        while (start < text.size()) {
            std::size_t hit = text.size();
            token_id hit_id = -1;
            if (parse_special) {
                for (token_id id : special_ids_) {  // earliest, then longest, occurrence wins
                    const auto& p = pieces_[id];
                    auto pos = text.find(p, start);
                    if (pos < hit || (pos == hit && pos != text.size() && p.size() > pieces_[hit_id].size())) {
                        hit = pos;
                        hit_id = id;
                    }
                }
            }
            encode_ordinary(text.substr(start, hit - start), out);
            if (hit_id < 0) break;
            out.push_back(hit_id);
            start = hit + pieces_[hit_id].size();
        }
        return out;
    }

    /// @return the raw bytes of token @p id (special tokens yield their text).
    std::string decode(token_id id) const {
        if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size()) throw std::out_of_range("tokenizer: bad id");
        if (special_[id]) return pieces_[id];
        std::string out;
        for (const auto& cp : unicode::decode_utf8(pieces_[id])) {
            auto it = unicode_to_byte_.find(cp.value);
            if (it != unicode_to_byte_.end()) out += static_cast<char>(it->second);
        }
        return out;
    }

private:
    static constexpr std::uint64_t control_type = 3, user_defined_type = 4;

    /// GPT-2's reversible byte <-> printable code point map.
    void build_byte_maps() {
        std::uint32_t next = 256;
        for (std::uint32_t b = 0; b < 256; ++b) {
            const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
            const std::uint32_t cp = printable ? b : next++;
            byte_to_unicode_[b].clear();
            unicode::append_utf8(byte_to_unicode_[b], cp);
            unicode_to_byte_.emplace(cp, static_cast<std::uint8_t>(b));
        }
    }

    /// Splits text without special tokens into pre-tokens and BPE-encodes each.
    void encode_ordinary(std::string_view text, std::vector<token_id>& out) const {
        if (text.empty()) return;
        const auto cps = unicode::decode_utf8(text);
        // Stage 1 ("\p{N}" as its own regex): every number character is a piece.
        std::size_t run_begin = 0;
        for (std::size_t i = 0; i <= cps.size(); ++i) {
            if (i == cps.size() || unicode::is_number(cps[i])) {
                split_gpt2(text, cps, run_begin, i, out);
                if (i < cps.size()) bpe(text.substr(cps[i].offset, cps[i].length), out);
                run_begin = i + 1;
            }
        }
    }

    /// Stage 2: the GPT-2 rules on code points [begin, end):
    /// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    void split_gpt2(std::string_view text, const std::vector<unicode::code_point>& cps, std::size_t begin,
                    std::size_t end, std::vector<token_id>& out) const {
        auto at = [&](std::size_t i) -> const unicode::code_point* { return i < end ? &cps[i] : nullptr; };
        auto is_l = [&](std::size_t i) { return at(i) && unicode::is_letter(*at(i)); };
        auto is_n = [&](std::size_t i) { return at(i) && unicode::is_number(*at(i)); };
        auto is_s = [&](std::size_t i) { return at(i) && unicode::is_whitespace(*at(i)); };
        auto is_other = [&](std::size_t i) { return at(i) && !is_l(i) && !is_n(i) && !is_s(i); };
        auto ascii_at = [&](std::size_t i) -> char {
            return at(i) && at(i)->value < 128 ? static_cast<char>(at(i)->value) : '\0';
        };
        std::size_t i = begin;
        while (i < end) {
            std::size_t j = i;
            if (ascii_at(i) == '\'') {
                const char a = ascii_at(i + 1), b = ascii_at(i + 2);
                if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) j = i + 3;
                else if (a == 's' || a == 't' || a == 'm' || a == 'd') j = i + 2;
            }
            if (j == i) {
                const std::size_t k = (ascii_at(i) == ' ') ? i + 1 : i;  // optional leading space
                if (is_l(k)) {
                    for (j = k; is_l(j); ++j) {}
                } else if (is_n(k)) {
                    for (j = k; is_n(j); ++j) {}
                } else if (is_other(k)) {
                    for (j = k; is_other(j); ++j) {}
                } else {
                    for (j = i; is_s(j); ++j) {}
                    if (j - i > 1 && j < end) --j;  // \s+(?!\S): leave one space for the next word
                }
            }
            const std::size_t first = cps[i].offset;
            const std::size_t last = cps[j - 1].offset + cps[j - 1].length;
            bpe(text.substr(first, last - first), out);
            i = j;
        }
    }

    /// Applies the ranked merges to one pre-token and appends the resulting ids.
    void bpe(std::string_view piece, std::vector<token_id>& out) const {
        std::vector<std::string> symbols;
        symbols.reserve(piece.size());
        for (unsigned char c : piece) symbols.push_back(byte_to_unicode_[c]);
        std::string key;
        while (symbols.size() > 1) {
            int best_rank = std::numeric_limits<int>::max();
            std::size_t best = 0;
            for (std::size_t k = 0; k + 1 < symbols.size(); ++k) {
                key.assign(symbols[k]).append(" ").append(symbols[k + 1]);
                auto it = merge_rank_.find(key);
                if (it != merge_rank_.end() && it->second < best_rank) {
                    best_rank = it->second;
                    best = k;
                }
            }
            if (best_rank == std::numeric_limits<int>::max()) break;
            symbols[best] += symbols[best + 1];
            symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
        }
        for (const auto& s : symbols) {
            auto it = ids_.find(s);
            if (it != ids_.end()) {
                out.push_back(it->second);
            } else {  // cannot happen with a complete byte-level vocabulary; fall back to single bytes
                for (const auto& cp : unicode::decode_utf8(s)) {
                    std::string one;
                    unicode::append_utf8(one, cp.value);
                    out.push_back(id_of(one));
                }
            }
        }
    }

    std::vector<std::string> pieces_;
    std::unordered_map<std::string, token_id> ids_;
    std::vector<bool> special_;
    std::vector<token_id> special_ids_;
    std::unordered_map<std::string, int> merge_rank_;
    std::array<std::string, 256> byte_to_unicode_;
    std::unordered_map<std::uint32_t, std::uint8_t> unicode_to_byte_;
    token_id eos_ = -1;
};

}  // namespace smollm2
