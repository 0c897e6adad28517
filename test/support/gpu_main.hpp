// Entry point of the GPU test executables: exits 77 (CTest "Skipped") with a clear message when no
// CUDA device is usable; otherwise runs the Boost.Test module. Include once, after defining the tests.
#pragma once

#include <kvcompact/cuda/check.cuh>

#include <boost/test/unit_test.hpp>

#include <cstdio>

int main(int argc, char* argv[]) {
  if (kvcompact::cuda::device_count() == 0) {
    std::puts("SKIPPED: no CUDA device present (cudaGetDeviceCount reports no device or no driver); GPU tests did not run.");
    return 77;
  }
  return boost::unit_test::unit_test_main(&init_unit_test, argc, argv);
}
