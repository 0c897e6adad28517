// SPDX-License-Identifier: Apache-2.0
/// @file gguf.hpp
/// @brief Minimal reader for GGUF (version 2/3) model files: header, metadata,
///        tensor directory and a read-only memory map of the tensor data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace smollm2::gguf {

/// GGUF metadata value type tags, as stored in the file.
enum class value_type : std::uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
    string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};

struct value;

/// A homogeneous metadata array (element type plus elements).
struct array_value {
    value_type element_type{};           ///< type tag of every element
    std::vector<value> elements;         ///< the elements in file order
};

/// One metadata value of any GGUF type.
struct value {
    std::variant<std::uint64_t, std::int64_t, double, bool, std::string, array_value> data;

    /// @return the value as an unsigned integer; throws if it is not integral.
    std::uint64_t as_uint() const {
        if (auto* u = std::get_if<std::uint64_t>(&data)) return *u;
        if (auto* i = std::get_if<std::int64_t>(&data)) return static_cast<std::uint64_t>(*i);
        throw std::runtime_error("gguf: metadata value is not an integer");
    }
    /// @return the value as a double; accepts integers and floats.
    double as_double() const {
        if (auto* d = std::get_if<double>(&data)) return *d;
        if (auto* u = std::get_if<std::uint64_t>(&data)) return static_cast<double>(*u);
        if (auto* i = std::get_if<std::int64_t>(&data)) return static_cast<double>(*i);
        throw std::runtime_error("gguf: metadata value is not numeric");
    }
    /// @return the value as a string; throws otherwise.
    const std::string& as_string() const {
        if (auto* s = std::get_if<std::string>(&data)) return *s;
        throw std::runtime_error("gguf: metadata value is not a string");
    }
    /// @return the value as an array; throws otherwise.
    const array_value& as_array() const {
        if (auto* a = std::get_if<array_value>(&data)) return *a;
        throw std::runtime_error("gguf: metadata value is not an array");
    }
};

/// ggml tensor element types (subset of the numbering used by GGUF).
enum class tensor_type : std::uint32_t {
    f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9,
    q2_k = 10, q3_k = 11, q4_k = 12, q5_k = 13, q6_k = 14, q8_k = 15, bf16 = 30,
};

/// Directory entry of one tensor.
struct tensor_info {
    std::string name;                    ///< tensor name, e.g. "blk.0.attn_q.weight"
    std::vector<std::uint64_t> dims;     ///< ne[0] (innermost, contiguous) first
    tensor_type type{};                  ///< storage type
    std::uint64_t offset = 0;            ///< byte offset relative to the data section
    const std::byte* data = nullptr;     ///< pointer into the mapped file

    /// @return total number of elements.
    std::uint64_t element_count() const {
        std::uint64_t n = 1;
        for (auto d : dims) n *= d;
        return n;
    }
};

/// A parsed, memory-mapped GGUF file. The mapping lives as long as the object.
class file {
public:
    /// Opens and parses @p path; throws std::runtime_error on malformed input.
    explicit file(const std::string& path) {
        fd_ = ::open(path.c_str(), O_RDONLY);
        if (fd_ < 0) throw std::runtime_error("gguf: cannot open " + path);
        struct stat st {};
        if (::fstat(fd_, &st) != 0) throw std::runtime_error("gguf: cannot stat " + path);
        size_ = static_cast<std::size_t>(st.st_size);
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
        if (p == MAP_FAILED) throw std::runtime_error("gguf: mmap failed for " + path);
        base_ = static_cast<const std::byte*>(p);
        parse();
    }
    file(const file&) = delete;
    file& operator=(const file&) = delete;
    ~file() {
        if (base_) ::munmap(const_cast<std::byte*>(base_), size_);
        if (fd_ >= 0) ::close(fd_);
    }

    /// @return all metadata key/value pairs.
    const std::map<std::string, value>& metadata() const { return metadata_; }
    /// @return all tensor directory entries in file order.
    const std::vector<tensor_info>& tensors() const { return tensors_; }

    /// @return true when metadata key @p key exists.
    bool has(const std::string& key) const { return metadata_.count(key) != 0; }
    /// @return the metadata value stored under @p key; throws if missing.
    const value& get(const std::string& key) const {
        auto it = metadata_.find(key);
        if (it == metadata_.end()) throw std::runtime_error("gguf: missing metadata key " + key);
        return it->second;
    }
    /// @return the tensor named @p name, or nullptr when absent.
    const tensor_info* find_tensor(std::string_view name) const {
        for (const auto& t : tensors_)
            if (t.name == name) return &t;
        return nullptr;
    }
    /// @return the tensor named @p name; throws if absent.
    const tensor_info& tensor(std::string_view name) const {
        if (auto* t = find_tensor(name)) return *t;
        throw std::runtime_error("gguf: missing tensor " + std::string(name));
    }

private:
    template <class T>
    T read_pod() {
        if (pos_ + sizeof(T) > size_) throw std::runtime_error("gguf: truncated file");
        T v;
        std::memcpy(&v, base_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }

    std::string read_string() {
        auto n = read_pod<std::uint64_t>();
        if (pos_ + n > size_) throw std::runtime_error("gguf: truncated string");
        std::string s(reinterpret_cast<const char*>(base_ + pos_), n);
        pos_ += n;
        return s;
    }

    value read_value(value_type t) {
        switch (t) {
            case value_type::u8: return {std::uint64_t{read_pod<std::uint8_t>()}};
            case value_type::i8: return {std::int64_t{read_pod<std::int8_t>()}};
            case value_type::u16: return {std::uint64_t{read_pod<std::uint16_t>()}};
            case value_type::i16: return {std::int64_t{read_pod<std::int16_t>()}};
            case value_type::u32: return {std::uint64_t{read_pod<std::uint32_t>()}};
            case value_type::i32: return {std::int64_t{read_pod<std::int32_t>()}};
            case value_type::u64: return {read_pod<std::uint64_t>()};
            case value_type::i64: return {read_pod<std::int64_t>()};
            case value_type::f32: return {double{read_pod<float>()}};
            case value_type::f64: return {read_pod<double>()};
            case value_type::boolean: return {read_pod<std::uint8_t>() != 0};
            case value_type::string: return {read_string()};
            case value_type::array: {
                array_value a;
                a.element_type = static_cast<value_type>(read_pod<std::uint32_t>());
                auto n = read_pod<std::uint64_t>();
                a.elements.reserve(n);
                for (std::uint64_t i = 0; i < n; ++i) a.elements.push_back(read_value(a.element_type));
                return {std::move(a)};
            }
        }
        throw std::runtime_error("gguf: unknown metadata value type " +
                                 std::to_string(static_cast<std::uint32_t>(t)));
    }

    void parse() {
        if (size_ < 4 || std::memcmp(base_, "GGUF", 4) != 0) throw std::runtime_error("gguf: bad magic");
        pos_ = 4;
        const auto version = read_pod<std::uint32_t>();
        if (version < 2 || version > 3) throw std::runtime_error("gguf: unsupported version " + std::to_string(version));
        auto n_tensors = read_pod<std::uint64_t>();
        auto n_kv = read_pod<std::uint64_t>();
        for (std::uint64_t i = 0; i < n_kv; ++i) {
            auto key = read_string();
            auto t = static_cast<value_type>(read_pod<std::uint32_t>());
            metadata_.emplace(std::move(key), read_value(t));
        }
        tensors_.reserve(n_tensors);
        for (std::uint64_t i = 0; i < n_tensors; ++i) {
            tensor_info ti;
            ti.name = read_string();
            auto n_dims = read_pod<std::uint32_t>();
            for (std::uint32_t d = 0; d < n_dims; ++d) ti.dims.push_back(read_pod<std::uint64_t>());
            ti.type = static_cast<tensor_type>(read_pod<std::uint32_t>());
            ti.offset = read_pod<std::uint64_t>();
            tensors_.push_back(std::move(ti));
        }
        std::uint64_t alignment = has("general.alignment") ? get("general.alignment").as_uint() : 32;
        if (alignment == 0) throw std::runtime_error("gguf: zero alignment");
        std::uint64_t data_start = (pos_ + alignment - 1) / alignment * alignment;
        for (auto& t : tensors_) {
            if (data_start + t.offset > size_) throw std::runtime_error("gguf: tensor " + t.name + " out of file");
            t.data = base_ + data_start + t.offset;
        }
    }

    int fd_ = -1;
    std::size_t size_ = 0;
    std::size_t pos_ = 0;
    const std::byte* base_ = nullptr;
    std::map<std::string, value> metadata_;
    std::vector<tensor_info> tensors_;
};

}  // namespace smollm2::gguf
