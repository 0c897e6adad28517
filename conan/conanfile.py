# SPDX-License-Identifier: Apache-2.0
"""Conan 2 recipe of kvcompact (header-only C++20 library with CUDA kernels), in-repo.

    conan profile detect --exist-ok
    conan create conan/ --build=missing

A detected profile works as it is (its compiler.cppstd may say gnu17): the package's CMake targets
compile their users as C++20 whatever the profile says. Consumers that do not build with CMake
must pass -s compiler.cppstd=20 themselves.

The package is made by the project's own CMake install (tests, examples, docs off). Consumers use
CMakeDeps, as with the CMake package:

    find_package(kvcompact CONFIG REQUIRED)                   # kvcompact::kvcompact
    find_package(kvcompact CONFIG REQUIRED COMPONENTS cuda)   # kvcompact::cuda
    kvcompact_target_cuda_cxx20(app)                          # .cu sources as C++20 (build module)

The CUDA toolkit (nvcc, cudart, CCCL/libcu++) is a system prerequisite of the cuda component, found
by the consumer's find_package(CUDAToolkit); this recipe does not require it. The CPU backend's
threads are OpenMP, used when the consumer compiles with it (find_package(OpenMP) before kvcompact
gives kvcompact::openmp); without it the same code runs serially: nothing to require here either.
"""
import os
import re

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.build import supported_cppstd
from conan.tools.cmake import CMake, cmake_layout
from conan.tools.files import copy, load, rm

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

    # Installed by the project's CMake (cmake/kvcompactCUDAStandard.cmake: kvcompact_target_cuda_cxx20;
    # cmake/kvcompactDependencies.cmake: C++20, CUDA toolkit and CCCL for the targets, component checks).
    _build_modules = ("share/kvcompact/kvcompactCUDAStandard.cmake", "share/kvcompact/kvcompactDependencies.cmake")

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
        # What matters is that the compiler can do C++20; the profile's cppstd does not (see above).
        if self.settings.get_safe("compiler.version") and "20" not in (supported_cppstd(self) or ["20"]):
            raise ConanInvalidConfiguration(
                f"kvcompact needs a C++20 compiler; {self.settings.compiler} {self.settings.compiler.version} is not one")
        cppstd = self.settings.get_safe("compiler.cppstd")
        year = int(str(cppstd).replace("gnu", "")) if cppstd else 20
        if (1900 if year > 90 else 2000) + year < 2020:
            self.output.info(f"compiler.cppstd={cppstd}: kvcompact's CMake targets compile their users as C++20 "
                             "anyway; pass -s compiler.cppstd=20 for other build systems")

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
        # CMakeDeps generates the config; keep only the modules it includes (see _build_modules).
        for pattern in ("kvcompactConfig*.cmake", "kvcompactTargets*.cmake"):
            rm(self, pattern, os.path.join(self.package_folder, "share", "kvcompact"))
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", "kvcompact")
        # The aggregate target (every component); the documented ones are kvcompact::kvcompact and kvcompact::cuda.
        self.cpp_info.set_property("cmake_target_name", "kvcompact::all")
        self.cpp_info.set_property("cmake_build_modules", list(self._build_modules))

        core = self.cpp_info.components["core"]
        core.set_property("cmake_target_name", "kvcompact::kvcompact")
        core.includedirs = ["include"]
        core.bindirs = []
        core.libdirs = []

        # Links CUDA::cudart and CCCL in the consumer's project (build module), when the toolkit is found there.
        cuda = self.cpp_info.components["cuda"]
        cuda.set_property("cmake_target_name", "kvcompact::cuda")
        cuda.requires = ["core"]
        cuda.includedirs = []
        cuda.bindirs = []
        cuda.libdirs = []
