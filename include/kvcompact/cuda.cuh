// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Umbrella header of the CUDA backend (needs nvcc): the host library plus CUDA error checking.
#pragma once

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/kvcompact.hpp>
