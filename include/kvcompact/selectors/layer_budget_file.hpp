// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Host-only reading and writing of per-layer budget files (calibrated PrefixKV / XKV tables),
/// checked against the model they were calibrated for.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/selectors/layer_table.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <istream>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {
/// The error of a malformed budget file: "<where>: <argument>: <source>:<line>: <what>".
[[noreturn]] inline void bad_budget_file(const char* where, const std::string& source, int line, const std::string& what) {
  throw error(where, "file", source + ":" + std::to_string(line) + ": " + what);
}

/// Parses @p count numbers of a `keep` or `spread` line, each within [low, high] (low excluded when @p open_low).
inline std::vector<double> budget_numbers(std::istringstream& in, index_t count, double low, bool open_low, double high, const std::string& source,
                                          int line, const char* key) {
  std::vector<double> values;
  for (std::string word; in >> word;) {
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size()) bad_budget_file("read_layer_budgets", source, line, std::string(key) + ": \"" + word + "\" is not a number");
    if (!(open_low ? v > low : v >= low) || !(v <= high))
      bad_budget_file("read_layer_budgets", source, line,
                      std::string(key) + ": entry " + std::to_string(values.size()) + " is " + word + ", outside " + (open_low ? "(" : "[") +
                          std::to_string(low) + ", " + std::to_string(high) + "]");
    values.push_back(v);
  }
  if (static_cast<index_t>(values.size()) != count)
    bad_budget_file("read_layer_budgets", source, line,
                    std::string(key) + " has " + std::to_string(values.size()) + " entries but the file's model has " + std::to_string(count) + " layers");
  return values;
}
}  // namespace detail

namespace budgets {

/// @brief The model a budget file belongs to. Layer count, KV heads and head dimension are compared
/// with the cache; the fingerprint is an engine-defined string that changes with the weights (the
/// SmolLM2 example hashes the GGUF's tensor directory and the first bytes of every tensor).
struct model_signature {
  std::string name;         ///< human-readable model name (reported, not compared)
  index_t layers = 0;       ///< storage layers the tables describe
  index_t kv_heads = 0;     ///< KV heads per layer
  index_t head_dim = 0;     ///< head dimension
  std::string fingerprint;  ///< engine-defined identity of the weights (no whitespace)
};

/// @brief One calibrated table: the per-layer kept fractions for one average kept fraction.
struct calibrated_table {
  double keep_fraction = 0;    ///< the average kept fraction the table was calibrated for (its key in the file)
  std::vector<double> keep;    ///< kept fraction of every layer, in (0, 1]
  std::vector<double> spread;  ///< per-layer standard deviation over the calibration prompts (may be empty)
};

/// @brief The content of a budget file.
///
/// The format is line-based text (UTF-8, `#` starts a comment line, blank lines are ignored):
/// ```
/// kvcompact-layer-budgets 1          first line: magic and format version
/// method prefixkv                    the calibration that produced the tables (one word)
/// model SmolLM2-135M-Instruct        model name (rest of the line)
/// layers 30                          the model's layer count, KV heads and head dimension
/// kv_heads 3
/// head_dim 64
/// fingerprint fnv1a64:0123abcd...    engine-defined identity of the weights (one word)
/// note any text                      calibration details, any number of lines (optional)
/// table 0.2                          starts a table for average kept fraction 0.2
/// keep 0.11 0.35 ...                 `layers` kept fractions in (0, 1]
/// spread 0.01 0.02 ...               `layers` standard deviations >= 0 (optional)
/// ```
/// Every key but `note`, `keep` and `spread` appears once before the first `table`; `keep` and
/// `spread` belong to the `table` above them; unknown keys are errors.
struct layer_budget_file {
  std::string method;                   ///< calibration method ("prefixkv", "xkv", ...)
  model_signature model;                ///< the model the tables belong to
  std::vector<std::string> notes;       ///< free-form notes (calibration text, sizes, dates)
  std::vector<calibrated_table> tables; ///< one table per average kept fraction
};


/// @brief Parses a budget file.
/// @param in the text @param source the file's name, used in error messages
/// @return the content
/// @throws kvcompact::error (argument `file`) naming the source and line of the first problem
inline layer_budget_file read_layer_budgets(std::istream& in, const std::string& source) {
  layer_budget_file f;
  const char* where = "read_layer_budgets";
  bool magic = false, has_layers = false, has_heads = false, has_dim = false;
  int number = 0;
  auto positive = [&](std::istringstream& s, const std::string& key) {
    long long v = 0;
    if (!(s >> v) || v <= 0) detail::bad_budget_file(where, source, number, key + " must be a positive integer");
    return static_cast<index_t>(v);
  };
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::istringstream words(line);
    std::string key;
    if (!(words >> key) || key[0] == '#') continue;
    if (!magic) {
      int version = 0;
      if (key != "kvcompact-layer-budgets" || !(words >> version))
        detail::bad_budget_file(where, source, number, "not a kvcompact budget file (the first line must be \"kvcompact-layer-budgets 1\")");
      if (version != 1) detail::bad_budget_file(where, source, number, "format version " + std::to_string(version) + " is not supported (only 1)");
      magic = true;
      continue;
    }
    const bool in_header = f.tables.empty();
    auto once = [&](bool seen) {
      if (!in_header) detail::bad_budget_file(where, source, number, key + " after the first table");
      if (seen) detail::bad_budget_file(where, source, number, key + " given twice");
    };
    if (key == "method") {
      once(!f.method.empty());
      if (!(words >> f.method)) detail::bad_budget_file(where, source, number, "method needs a name");
    } else if (key == "model") {
      once(!f.model.name.empty());
      std::getline(words >> std::ws, f.model.name);
      if (f.model.name.empty()) detail::bad_budget_file(where, source, number, "model needs a name");
    } else if (key == "fingerprint") {
      once(!f.model.fingerprint.empty());
      if (!(words >> f.model.fingerprint)) detail::bad_budget_file(where, source, number, "fingerprint needs a value");
    } else if (key == "layers") {
      once(has_layers);
      f.model.layers = positive(words, key);
      if (f.model.layers > layer_table::max_layers) detail::bad_budget_file(where, source, number, "layers must be at most 256");
      has_layers = true;
    } else if (key == "kv_heads") {
      once(has_heads);
      f.model.kv_heads = positive(words, key);
      has_heads = true;
    } else if (key == "head_dim") {
      once(has_dim);
      f.model.head_dim = positive(words, key);
      has_dim = true;
    } else if (key == "note") {
      std::string text;
      std::getline(words >> std::ws, text);
      f.notes.push_back(text);
    } else if (key == "table") {
      if (f.method.empty() || f.model.name.empty() || f.model.fingerprint.empty() || !has_layers || !has_heads || !has_dim)
        detail::bad_budget_file(where, source, number, "table before method, model, layers, kv_heads, head_dim and fingerprint");
      if (!f.tables.empty() && f.tables.back().keep.empty())
        detail::bad_budget_file(where, source, number, "the table above has no keep line");
      calibrated_table t;
      if (!(words >> t.keep_fraction) || !(t.keep_fraction > 0.0 && t.keep_fraction <= 1.0))
        detail::bad_budget_file(where, source, number, "table needs its average kept fraction in (0, 1]");
      for (const auto& other : f.tables)
        if (std::abs(other.keep_fraction - t.keep_fraction) < 1e-9)
          detail::bad_budget_file(where, source, number, "a second table for kept fraction " + std::to_string(t.keep_fraction));
      f.tables.push_back(t);
    } else if (key == "keep" || key == "spread") {
      if (f.tables.empty()) detail::bad_budget_file(where, source, number, key + " before the first table");
      auto& t = f.tables.back();
      auto& target = key == "keep" ? t.keep : t.spread;
      if (!target.empty()) detail::bad_budget_file(where, source, number, key + " given twice for one table");
      target = key == "keep" ? detail::budget_numbers(words, f.model.layers, 0.0, true, 1.0, source, number, "keep")
                             : detail::budget_numbers(words, f.model.layers, 0.0, false, 1.0, source, number, "spread");
    } else {
      detail::bad_budget_file(where, source, number, "unknown key \"" + key + "\"");
    }
  }
  if (!magic) detail::bad_budget_file(where, source, number, "empty: not a kvcompact budget file");
  if (f.tables.empty()) detail::bad_budget_file(where, source, number, "no table");
  if (f.tables.back().keep.empty()) detail::bad_budget_file(where, source, number, "the last table has no keep line");
  return f;
}

/// @brief Reads the budget file at @p path (read_layer_budgets(std::istream&, const std::string&)).
/// @param path the file @return the content
/// @throws kvcompact::error naming `path` when the file cannot be opened, `file` when it is malformed
inline layer_budget_file read_layer_budgets(const std::string& path) {
  std::ifstream in(path);
  detail::require(static_cast<bool>(in), "read_layer_budgets", "path", [&] { return "cannot open \"" + path + "\""; });
  return read_layer_budgets(in, path);
}

/// @brief Writes @p file in the format of kvcompact::budgets::layer_budget_file (values with 6 decimals).
/// @param out the stream @param file the content
/// @throws kvcompact::error naming `file` when its content could not be read back (a table of the wrong
/// length, a fraction outside (0, 1], a name with whitespace where one word is expected)
inline void write_layer_budgets(std::ostream& out, const layer_budget_file& file) {
  const char* where = "write_layer_budgets";
  auto one_word = [&](const std::string& s, const char* what) {
    detail::require(!s.empty() && s.find_first_of(" \t\r\n") == std::string::npos, where, "file",
                    [&] { return std::string(what) + " must be one word, got \"" + s + "\""; });
  };
  one_word(file.method, "method");
  one_word(file.model.fingerprint, "model.fingerprint");
  detail::require(!file.model.name.empty() && file.model.name.find('\n') == std::string::npos, where, "file", "model.name must be one non-empty line");
  detail::require(file.model.layers > 0 && file.model.layers <= layer_table::max_layers && file.model.kv_heads > 0 && file.model.head_dim > 0, where,
                  "file", "model.layers must be in [1, 256], model.kv_heads and model.head_dim positive");
  detail::require(!file.tables.empty(), where, "file", "no table");
  out << "kvcompact-layer-budgets 1\nmethod " << file.method << "\nmodel " << file.model.name << "\nlayers " << file.model.layers << "\nkv_heads "
      << file.model.kv_heads << "\nhead_dim " << file.model.head_dim << "\nfingerprint " << file.model.fingerprint << "\n";
  for (const auto& note : file.notes) {
    detail::require(note.find('\n') == std::string::npos, where, "file", "a note must be one line");
    out << "note " << note << "\n";
  }
  char number[32];
  for (const auto& t : file.tables) {
    detail::require(static_cast<index_t>(t.keep.size()) == file.model.layers, where, "file",
                    [&] { return "the table for " + std::to_string(t.keep_fraction) + " has " + std::to_string(t.keep.size()) + " layers, not " +
                                 std::to_string(file.model.layers); });
    detail::require(t.spread.empty() || t.spread.size() == t.keep.size(), where, "file", "a spread line needs one entry per layer");
    std::snprintf(number, sizeof number, "%.6g", t.keep_fraction);
    out << "table " << number << "\nkeep";
    for (double k : t.keep) {
      detail::require(k > 0.0 && k <= 1.0, where, "file", [&] { return "kept fraction " + std::to_string(k) + " outside (0, 1]"; });
      std::snprintf(number, sizeof number, " %.6f", k);
      out << number;
    }
    out << "\n";
    if (!t.spread.empty()) {
      out << "spread";
      for (double v : t.spread) {
        std::snprintf(number, sizeof number, " %.6f", v);
        out << number;
      }
      out << "\n";
    }
  }
}

/// @brief Loads the table for average kept fraction @p keep_fraction from the budget file at @p path,
/// after checking that the file belongs to the model @p expected.
/// @param path the budget file
/// @param expected the model that will run: layers, KV heads, head dimension and fingerprint must match
/// @param keep_fraction the average kept fraction whose table is wanted (matched to 1e-6)
/// @param min_slots a layer keeps at least this many slots
/// @return the table, a kvcompact::budgets::layer_table of kept fractions
/// @throws kvcompact::error naming `model` for a file of another model (both models named in the
/// message), `keep_fraction` when the file has no such table (the available ones are listed), and
/// `path` / `file` for an unreadable or malformed file
inline layer_table load_layer_budgets(const std::string& path, const model_signature& expected, double keep_fraction, index_t min_slots = 1) {
  const layer_budget_file f = read_layer_budgets(path);
  auto describe = [](const model_signature& m) {
    return m.name + " (" + std::to_string(m.layers) + " layers, " + std::to_string(m.kv_heads) + " KV heads, head_dim " + std::to_string(m.head_dim) +
           ", fingerprint " + m.fingerprint + ")";
  };
  detail::require(f.model.layers == expected.layers && f.model.kv_heads == expected.kv_heads && f.model.head_dim == expected.head_dim &&
                      f.model.fingerprint == expected.fingerprint,
                  "load_layer_budgets", "model",
                  [&] { return path + " was calibrated for " + describe(f.model) + ", not for the model running, " + describe(expected); });
  std::string available;
  for (const auto& t : f.tables) {
    if (std::abs(t.keep_fraction - keep_fraction) <= 1e-6) return layer_table::fractions(t.keep, min_slots);
    available += (available.empty() ? "" : ", ") + std::to_string(t.keep_fraction);
  }
  throw error("load_layer_budgets", "keep_fraction", path + " has no table for " + std::to_string(keep_fraction) + " (it has " + available + ")");
}

}  // namespace budgets

KVCOMPACT_NAMESPACE_END
