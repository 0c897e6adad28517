// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Umbrella header of the CUDA backend (needs nvcc): the host library, CUDA error checking and kvcompact::cuda::session.
#pragma once

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/device_rank_group.cuh>
#include <kvcompact/cuda/key_pruning.cuh>
#include <kvcompact/cuda/session.cuh>
#include <kvcompact/cuda/sparse_attention.cuh>
#include <kvcompact/kvcompact.hpp>
