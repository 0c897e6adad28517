// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Library version numbers.
#pragma once

/// @brief Major version of kvcompact.
#define KVCOMPACT_VERSION_MAJOR 0
/// @brief Minor version of kvcompact.
#define KVCOMPACT_VERSION_MINOR 1
/// @brief Patch version of kvcompact.
#define KVCOMPACT_VERSION_PATCH 0
/// @brief Version as one integer: major * 10000 + minor * 100 + patch.
#define KVCOMPACT_VERSION (KVCOMPACT_VERSION_MAJOR * 10000 + KVCOMPACT_VERSION_MINOR * 100 + KVCOMPACT_VERSION_PATCH)
