// SPDX-License-Identifier: Apache-2.0
/// @file fingerprint.hpp
/// @brief The identity of a loaded GGUF model for per-layer budget files
///        (kvcompact::budgets::model_signature): its shape and a hash of its weights.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include <kvcompact/selectors/layer_budget_file.hpp>

#include "gguf.hpp"
#include "model.hpp"

namespace smollm2 {

/// @return the 64-bit FNV-1a hash of @p size bytes at @p data, continuing from @p hash.
inline std::uint64_t fnv1a(const void* data, std::size_t size, std::uint64_t hash = 14695981039346656037ull) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < size; ++i) hash = (hash ^ p[i]) * 1099511628211ull;
    return hash;
}

/// The signature of the model in @p file: its name (general.name, else "llama"), layers, KV heads,
/// head dimension and the fingerprint "fnv1a64:<hex>", a hash of every tensor's name, shape, type
/// and first bytes of data (at most 256, never more than the tensor holds at 4 bits per element).
/// Another model, another quantisation or other weights give another fingerprint.
inline kvcompact::budgets::model_signature model_signature(const gguf::file& file, const model_config& c) {
    std::uint64_t hash = fnv1a("gguf", 4);
    for (const auto& t : file.tensors()) {
        hash = fnv1a(t.name.data(), t.name.size(), hash);
        for (auto d : t.dims) hash = fnv1a(&d, sizeof d, hash);
        hash = fnv1a(&t.type, sizeof t.type, hash);
        const std::uint64_t sample = t.element_count() / 2 < 256 ? t.element_count() / 2 : 256;
        hash = fnv1a(t.data, static_cast<std::size_t>(sample), hash);
    }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
    const std::string name = file.has("general.name") ? file.get("general.name").as_string() : std::string("llama");
    return {name, c.n_layers, c.n_kv_heads, c.head_dim, std::string("fnv1a64:") + hex};
}

}  // namespace smollm2
