// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Umbrella header: everything that builds without nvcc (components, layouts, CPU backend).
#pragma once

#include <kvcompact/calibration/knapsack.hpp>
#include <kvcompact/calibration/prefix_search.hpp>
#include <kvcompact/channels/presets.hpp>
#include <kvcompact/channels/pruned_policy.hpp>
#include <kvcompact/channels/think.hpp>
#include <kvcompact/config.hpp>
#include <kvcompact/cpu/key_pruning.hpp>
#include <kvcompact/cpu/session.hpp>
#include <kvcompact/error.hpp>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/layer_by_layer.hpp>
#include <kvcompact/layouts/flashinfer_paged.hpp>
#include <kvcompact/layouts/layer_condensed.hpp>
#include <kvcompact/layouts/paged.hpp>
#include <kvcompact/layouts/ragged_layers.hpp>
#include <kvcompact/layouts/strided.hpp>
#include <kvcompact/layouts/vllm_paged.hpp>
#include <kvcompact/numeric.hpp>
#include <kvcompact/policies.hpp>
#include <kvcompact/policy.hpp>
#include <kvcompact/pruned_keys.hpp>
#include <kvcompact/query_window.hpp>
#include <kvcompact/selectors/layer_budget_file.hpp>
#include <kvcompact/version.hpp>
#include <kvcompact/window_need.hpp>
