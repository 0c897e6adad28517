// SPDX-License-Identifier: Apache-2.0
// Host-only consumer of the installed kvcompact package.
#include <kvcompact/version.hpp>
#if __has_include(<kvcompact/kvcompact.hpp>)
#include <kvcompact/kvcompact.hpp>
#endif

#include <cstdio>

static_assert(KVCOMPACT_VERSION_MAJOR == EXPECTED_MAJOR, "installed major version differs from the project");
static_assert(KVCOMPACT_VERSION_MINOR == EXPECTED_MINOR, "installed minor version differs from the project");

int main() {
  std::printf("kvcompact %d.%d.%d found (host consumer)\n", KVCOMPACT_VERSION_MAJOR,
              KVCOMPACT_VERSION_MINOR, KVCOMPACT_VERSION_PATCH);
  return 0;
}
