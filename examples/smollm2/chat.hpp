// SPDX-License-Identifier: Apache-2.0
/// @file chat.hpp
/// @brief ChatML prompt formatting of SmolLM2-Instruct (the GGUF's Jinja
///        chat template, specialised to one user turn).
#pragma once

#include <string>
#include <string_view>

namespace smollm2 {

/// System prompt the SmolLM2 chat template inserts when none is given.
inline constexpr std::string_view default_system_prompt =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// @return `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
inline std::string chat_prompt(std::string_view user, std::string_view system = default_system_prompt) {
    std::string s;
    s.append("<|im_start|>system\n").append(system).append("<|im_end|>\n");
    s.append("<|im_start|>user\n").append(user).append("<|im_end|>\n");
    s.append("<|im_start|>assistant\n");
    return s;
}

}  // namespace smollm2
