# SPDX-License-Identifier: Apache-2.0
"""Conan 2 recipe of kvcompact (header-only C++20 library with CUDA kernels), in-repo.

    conan profile detect --exist-ok
    conan create conan/ --build=missing -nr -s compiler.cppstd=20

The package is made by the project's own CMake install (tests, examples, docs off), so it carries
the same headers and kvcompactConfig.cmake as any other install. Consumers use CMakeDeps:
find_package(kvcompact CONFIG REQUIRED) and kvcompact::kvcompact. The CUDA toolkit (nvcc, cudart,
CCCL/libcu++) is a system prerequisite of the CUDA backend and is not required by this recipe. The
CPU backend's threads are OpenMP, used when the consumer compiles with it (find_package(OpenMP),
OpenMP::OpenMP_CXX); without it the same code runs serially: nothing to require here either.
"""
import os
import re

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, cmake_layout
from conan.tools.files import copy, load

required_conan_version = ">=2.0"


class KvcompactConan(ConanFile):
    name = "kvcompact"
    description = "Header-only C++20/CUDA library that compresses the KV cache of LLM inference"
    license = "Apache-2.0"
    topics = ("llm", "kv-cache", "cuda", "header-only", "inference")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    generators = "CMakeToolchain"
    no_copy_source = True

    def _root(self):
        # conan/ inside the repository; after export the sources sit next to this file.
        parent = os.path.join(self.recipe_folder, "..")
        if os.path.exists(os.path.join(parent, "include", "kvcompact", "version.hpp")):
            return parent
        return self.recipe_folder

    def set_version(self):
        text = load(self, os.path.join(self._root(), "include", "kvcompact", "version.hpp"))
        parts = [re.search(rf"#define KVCOMPACT_VERSION_{p}\s+(\d+)", text).group(1)
                 for p in ("MAJOR", "MINOR", "PATCH")]
        self.version = ".".join(parts)

    def export(self):
        # set_version() needs version.hpp in the exported recipe folder too.
        copy(self, "include/kvcompact/version.hpp", self._root(), self.export_folder)

    def export_sources(self):
        root = self._root()
        for pattern in ("CMakeLists.txt", "LICENSE", "cmake/*", "include/*"):
            copy(self, pattern, root, self.export_sources_folder)

    def layout(self):
        cmake_layout(self)

    def package_id(self):
        self.info.clear()

    def validate(self):
        if self.settings.get_safe("compiler.cppstd"):
            check_min_cppstd(self, 20)

    def build(self):
        pass  # header-only: nothing to build

    def package(self):
        cmake = CMake(self)
        cmake.configure(variables={
            "KVCOMPACT_BUILD_TESTS": "OFF",
            "KVCOMPACT_BUILD_EXAMPLES": "OFF",
            "KVCOMPACT_BUILD_BENCHMARKS": "OFF",
            "KVCOMPACT_BUILD_DOCS": "OFF",
            "KVCOMPACT_ENABLE_CUDA": "OFF",
        })
        cmake.install()
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "kvcompact")
        self.cpp_info.set_property("cmake_target_name", "kvcompact::kvcompact")
