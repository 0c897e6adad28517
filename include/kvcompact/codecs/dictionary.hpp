// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief codecs::dictionary_set: CSR's dictionaries, one for the keys and one for the values of every
/// (layer, KV head), with the model they were fitted on; saving, loading and checking them (host only).
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

KVCOMPACT_NAMESPACE_BEGIN

namespace codecs {

/// @brief Which half of an entry a dictionary codes.
enum class entry_half : std::uint8_t {
  key = 0,    ///< the keys (after RoPE, as the cache holds them)
  value = 1,  ///< the values
};

/// @brief The dictionaries of a CSR cache (@ref methods_csr): `atoms` unit-norm vectors of `head_dim`
/// entries for the keys and for the values of every layer and KV head, fitted offline
/// (kvcompact::calibration::learn_dictionary) on one model, whose name this set carries.
struct dictionary_set {
  std::string model;        ///< the model the dictionaries were fitted on (a name and weights fingerprint)
  index_t layers = 0;       ///< layers
  index_t kv_heads = 0;     ///< KV heads per layer
  index_t head_dim = 0;     ///< entries of an atom
  index_t atoms = 0;        ///< N: atoms per dictionary, at most 65536 (16-bit indices)
  std::vector<float> data;  ///< [layer][kv head][key, value][atom][head_dim]

  /// @brief An all-zero set of the given shape.
  /// @param model the model's name @param layers layers @param kv_heads KV heads @param head_dim atom length
  /// @param atoms atoms per dictionary @return the set
  /// @throws kvcompact::error naming the extent that is not positive, or `atoms` above 65536
  static dictionary_set zeros(std::string model, index_t layers, index_t kv_heads, index_t head_dim, index_t atoms) {
    detail::require(layers > 0, "dictionary_set", "layers", "must be positive");
    detail::require(kv_heads > 0, "dictionary_set", "kv_heads", "must be positive");
    detail::require(head_dim > 0, "dictionary_set", "head_dim", "must be positive");
    detail::require(atoms > 0 && atoms <= 65536, "dictionary_set", "atoms", [&] { return "must be in [1, 65536], got " + std::to_string(atoms); });
    dictionary_set s{std::move(model), layers, kv_heads, head_dim, atoms, {}};
    s.data.assign(static_cast<std::size_t>(layers * kv_heads * 2 * atoms * head_dim), 0.0f);
    return s;
  }

  /// @brief The atoms of one dictionary. @param layer layer @param head KV head @param half keys or values
  /// @return [atoms][head_dim] floats
  [[nodiscard]] const float* atoms_of(index_t layer, index_t head, entry_half half) const {
    return data.data() + offset(layer, head, half);
  }
  /// @brief The atoms of one dictionary, writable. @param layer layer @param head KV head @param half keys or values
  /// @return [atoms][head_dim] floats
  float* atoms_of(index_t layer, index_t head, entry_half half) { return data.data() + offset(layer, head, half); }

  /// @brief Checks that this set fits a cache and a model (called by kvcompact::codecs::sparse_cache).
  /// @param cache_layers layers of the cache @param cache_kv_heads its KV heads @param cache_head_dim its head dimension
  /// @param expected_model the model the engine runs (empty: not checked) @param where the calling entry point
  /// @throws kvcompact::error naming `dictionary` when an extent or the model differs, or an atom is not unit-norm
  void validate(index_t cache_layers, index_t cache_kv_heads, index_t cache_head_dim, std::string_view expected_model, const char* where) const {
    detail::require(head_dim == cache_head_dim, where, "dictionary", [&] {
      return "has atoms of head_dim " + std::to_string(head_dim) + " but the cache's head_dim is " + std::to_string(cache_head_dim);
    });
    detail::require(layers == cache_layers && kv_heads == cache_kv_heads, where, "dictionary", [&] {
      return "covers " + std::to_string(layers) + " layers x " + std::to_string(kv_heads) + " KV heads but the cache has " + std::to_string(cache_layers) +
             " x " + std::to_string(cache_kv_heads);
    });
    detail::require(expected_model.empty() || expected_model == model, where, "dictionary",
                    [&] { return "was fitted on model \"" + model + "\", not on \"" + std::string(expected_model) + "\""; });
    detail::require(data.size() == static_cast<std::size_t>(layers * kv_heads * 2 * atoms * head_dim), where, "dictionary", "holds the wrong number of floats");
    for (index_t a = 0; a < layers * kv_heads * 2 * atoms; ++a) {
      double norm = 0.0;
      for (index_t d = 0; d < head_dim; ++d) norm += static_cast<double>(data[static_cast<std::size_t>(a * head_dim + d)]) * data[static_cast<std::size_t>(a * head_dim + d)];
      detail::require(std::abs(norm - 1.0) < 1e-3, where, "dictionary", [&] { return "atom " + std::to_string(a) + " is not unit-norm (squared norm " + std::to_string(norm) + ")"; });
    }
  }

  /// @brief Writes the set: a text header (format, model, extents), then the floats as raw binary (the host's byte order).
  /// @param path file to write
  /// @throws kvcompact::error naming `path` when it cannot be written
  void save(const std::string& path) const {
    std::ofstream out(path, std::ios::binary);
    detail::require(static_cast<bool>(out), "dictionary_set::save", "path", "cannot open " + path);
    out << "kvcompact-sparse-dictionary 1\n" << model << "\n" << layers << ' ' << kv_heads << ' ' << head_dim << ' ' << atoms << "\n";
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
    detail::require(static_cast<bool>(out), "dictionary_set::save", "path", "write failed: " + path);
  }

  /// @brief Reads a set written by save().
  /// @param path the file @return the set
  /// @throws kvcompact::error naming `path` (missing file, another format, truncated data)
  static dictionary_set load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    detail::require(static_cast<bool>(in), "dictionary_set::load", "path", "cannot open " + path);
    std::string format, model;
    std::getline(in, format);
    detail::require(format == "kvcompact-sparse-dictionary 1", "dictionary_set::load", "path", path + " is not a kvcompact sparse dictionary file");
    std::getline(in, model);
    index_t layers = 0, heads = 0, dim = 0, atoms = 0;
    in >> layers >> heads >> dim >> atoms;
    in.get();
    detail::require(static_cast<bool>(in) && layers > 0 && heads > 0 && dim > 0 && atoms > 0 && atoms <= 65536, "dictionary_set::load", "path",
                    path + ": bad extents");
    dictionary_set s = zeros(model, layers, heads, dim, atoms);
    in.read(reinterpret_cast<char*>(s.data.data()), static_cast<std::streamsize>(s.data.size() * sizeof(float)));
    detail::require(static_cast<bool>(in), "dictionary_set::load", "path", path + ": truncated");
    return s;
  }

 private:
  [[nodiscard]] std::size_t offset(index_t layer, index_t head, entry_half half) const {
    return static_cast<std::size_t>(((layer * kv_heads + head) * 2 + static_cast<index_t>(half)) * atoms * head_dim);
  }
};

}  // namespace codecs

KVCOMPACT_NAMESPACE_END
