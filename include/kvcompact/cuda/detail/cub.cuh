// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The CUB collectives the kernels use: `cub::BlockScan`, `cub::BlockReduce` and
/// `cub::WarpReduce` (default algorithms). Built with nvcc they are CCCL's, from the CUDA toolkit.
/// CUB's headers need the CUDA runtime's own declarations, so a host compiler cannot build them
/// against the CPU emulator: under `KVCOMPACT_CUDA_EMULATION` the emulator supplies stand-ins with
/// the same interface and contract (test/support/cuda_emulator_cub.hpp), and the native GPU tests
/// cover CCCL's versions.
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>

#if !defined(KVCOMPACT_CUDA_EMULATION)
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/warp/warp_reduce.cuh>
#endif
