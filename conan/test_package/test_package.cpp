// SPDX-License-Identifier: Apache-2.0
#include <kvcompact/version.hpp>
#include <kvcompact/config.hpp>
#if __has_include(<kvcompact/kvcompact.hpp>)
#include <kvcompact/kvcompact.hpp>
#endif

#include <cstdio>

int main() {
  std::printf("kvcompact %d.%d.%d\n", KVCOMPACT_VERSION_MAJOR, KVCOMPACT_VERSION_MINOR,
              KVCOMPACT_VERSION_PATCH);
  return 0;
}
