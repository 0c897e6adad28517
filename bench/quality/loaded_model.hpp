// SPDX-License-Identifier: Apache-2.0
/// @file loaded_model.hpp
/// @brief The model and text every bench/quality tool starts from: one definition of the loading
///        sequence (GGUF file, configuration, tokenizer, weights, signature; the essays as tokens).
#pragma once

#include <string>
#include <vector>

#include "essays.hpp"
#include "fingerprint.hpp"
#include "gguf.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace smollm2 {

/// A GGUF model loaded for the quality tools.
struct loaded_model {
    /// Loads the model at @p path.
    /// @throws std::runtime_error (or kvcompact::error) when the file is missing or malformed
    explicit loaded_model(const std::string& path)
        : file(path), config(model_config::from_gguf(file)), tok(file), weights(model_weights::from_gguf(file, config)),
          signature(model_signature(file, config)) {}

    gguf::file file;                                ///< the mapped model file
    model_config config;                            ///< hyper-parameters
    tokenizer tok;                                  ///< the model's tokenizer
    model_weights weights;                          ///< the weights
    kvcompact::budgets::model_signature signature;  ///< name and fingerprint (what budget files are checked against)

    /// @return the essays of @p dir (load_essays()) as tokens, without a beginning-of-text token
    std::vector<token_id> essay_tokens(const std::string& dir) const { return tok.encode(load_essays(dir), false); }
};

}  // namespace smollm2
