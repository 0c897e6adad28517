// SPDX-License-Identifier: Apache-2.0
/// @file gguf.hpp
/// @brief Minimal reader for GGUF (version 2/3) model files: header, metadata,
///        tensor directory and a read-only memory map of the tensor data.
///
/// Every malformed file is rejected with a std::runtime_error naming what is wrong
/// and where: counts and lengths are checked against the bytes left before
/// anything is allocated, metadata arrays nest at most max_array_depth levels,
/// `general.alignment` is a power of two up to 1 MiB, and each tensor's byte range
/// (its full size for its type and every dimension) lies inside the file, aligned,
/// with the tensors tiling the data section in order (so a type or shape that does
/// not match the stored bytes shows up as an overlap, a gap or a range past the end).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <cerrno>

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

/// Storage of one ggml type: `bytes` bytes per block of `elements` elements (ne[0]
/// is a whole number of blocks); elements == 0 for a type this reader does not know.
struct type_traits {
    std::uint64_t elements = 0;  ///< elements per block
    std::uint64_t bytes = 0;     ///< bytes per block
};

/// @return the block size and bytes of @p t (ggml's block layouts).
inline type_traits traits_of(tensor_type t) {
    switch (t) {
        case tensor_type::f32: return {1, 4};
        case tensor_type::f16: case tensor_type::bf16: return {1, 2};
        case tensor_type::q4_0: return {32, 18};
        case tensor_type::q4_1: return {32, 20};
        case tensor_type::q5_0: return {32, 22};
        case tensor_type::q5_1: return {32, 24};
        case tensor_type::q8_0: return {32, 34};
        case tensor_type::q8_1: return {32, 36};
        case tensor_type::q2_k: return {256, 84};
        case tensor_type::q3_k: return {256, 110};
        case tensor_type::q4_k: return {256, 144};
        case tensor_type::q5_k: return {256, 176};
        case tensor_type::q6_k: return {256, 210};
        case tensor_type::q8_k: return {256, 292};
    }
    return {};
}

/// Directory entry of one tensor.
struct tensor_info {
    std::string name;                    ///< tensor name, e.g. "blk.0.attn_q.weight"
    std::vector<std::uint64_t> dims;     ///< ne[0] (innermost, contiguous) first
    tensor_type type{};                  ///< storage type
    std::uint64_t offset = 0;            ///< byte offset relative to the data section
    std::uint64_t bytes = 0;             ///< stored size for its type and shape
    const std::byte* data = nullptr;     ///< pointer into the mapped file

    /// @return total number of elements (checked against overflow when the file is parsed).
    std::uint64_t element_count() const {
        std::uint64_t n = 1;
        for (auto d : dims) n *= d;
        return n;
    }
};

/// A parsed, memory-mapped GGUF file. The mapping lives as long as the object.
class file {
public:
    /// Deepest nesting of metadata arrays accepted (real files use one level).
    static constexpr int max_array_depth = 8;
    /// Largest `general.alignment` accepted.
    static constexpr std::uint64_t max_alignment = std::uint64_t{1} << 20;
    /// Most dimensions of a tensor (ggml's GGML_MAX_DIMS).
    static constexpr std::uint32_t max_dims = 4;

    /// Opens and parses @p path; throws std::runtime_error on malformed input.
    explicit file(const std::string& path) {
        fd_ = ::open(path.c_str(), O_RDONLY);
        if (fd_ < 0) throw std::runtime_error("gguf: cannot open " + path + ": " + std::strerror(errno));
        struct stat st {};
        if (::fstat(fd_, &st) != 0) fail_and_close("gguf: cannot stat " + path + ": " + std::strerror(errno));
        if (!S_ISREG(st.st_mode)) fail_and_close("gguf: " + path + " is not a regular file");
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ < 4) fail_and_close("gguf: " + path + " has " + std::to_string(size_) + " bytes, too short for a GGUF header");
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
        if (p == MAP_FAILED) fail_and_close("gguf: mmap failed for " + path + ": " + std::strerror(errno));
        base_ = static_cast<const std::byte*>(p);
        try {
            parse();
        } catch (...) {
            release();
            throw;
        }
    }
    file(const file&) = delete;
    file& operator=(const file&) = delete;
    ~file() { release(); }

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
    /// @return the unsigned integer stored under @p key; throws, naming the key, if it is
    /// missing, not an integer, or negative.
    std::uint64_t get_uint(const std::string& key) const {
        const value& v = get(key);
        if (auto* i = std::get_if<std::int64_t>(&v.data); i && *i < 0)
            throw std::runtime_error("gguf: metadata key " + key + " is negative (" + std::to_string(*i) + ")");
        if (!std::holds_alternative<std::uint64_t>(v.data) && !std::holds_alternative<std::int64_t>(v.data))
            throw std::runtime_error("gguf: metadata key " + key + " is not an integer");
        return v.as_uint();
    }
    /// @return the number stored under @p key; throws, naming the key, if it is missing or not numeric.
    double get_double(const std::string& key) const {
        const value& v = get(key);
        if (std::holds_alternative<bool>(v.data) || std::holds_alternative<std::string>(v.data) || std::holds_alternative<array_value>(v.data))
            throw std::runtime_error("gguf: metadata key " + key + " is not a number");
        return v.as_double();
    }
    /// @return the array stored under @p key; throws, naming the key, if it is missing or not an array.
    const array_value& get_array(const std::string& key) const {
        const value& v = get(key);
        if (!std::holds_alternative<array_value>(v.data)) throw std::runtime_error("gguf: metadata key " + key + " is not an array");
        return v.as_array();
    }
    /// @return the string stored under @p key; throws, naming the key, if it is missing or not a string.
    const std::string& get_string(const std::string& key) const {
        const value& v = get(key);
        if (!std::holds_alternative<std::string>(v.data)) throw std::runtime_error("gguf: metadata key " + key + " is not a string");
        return v.as_string();
    }
    /// @return the array of strings stored under @p key; throws, naming the key, if it is
    /// missing or not an array of strings.
    const array_value& get_strings(const std::string& key) const {
        const array_value& a = get_array(key);
        if (a.element_type != value_type::string) throw std::runtime_error("gguf: metadata key " + key + " is not an array of strings");
        return a;
    }
    /// @return the array of integers stored under @p key; throws, naming the key, if it is
    /// missing or not an array of integers.
    const array_value& get_integers(const std::string& key) const {
        const array_value& a = get_array(key);
        switch (a.element_type) {
            case value_type::u8: case value_type::i8: case value_type::u16: case value_type::i16: case value_type::u32:
            case value_type::i32: case value_type::u64: case value_type::i64: return a;
            default: throw std::runtime_error("gguf: metadata key " + key + " is not an array of integers");
        }
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
    [[noreturn]] void fail_and_close(const std::string& what) {
        release();
        throw std::runtime_error(what);
    }
    void release() {
        if (base_) ::munmap(const_cast<std::byte*>(base_), size_);
        if (fd_ >= 0) ::close(fd_);
        base_ = nullptr;
        fd_ = -1;
    }

    /// Bytes left after the read position.
    std::uint64_t remaining() const { return size_ - pos_; }

    /// Throws "truncated" unless @p n bytes remain; @p what says what was being read.
    void need(std::uint64_t n, const char* what) const {
        if (n > remaining())
            throw std::runtime_error("gguf: truncated file: " + std::string(what) + " at byte " + std::to_string(pos_) + " needs " +
                                     std::to_string(n) + " bytes, " + std::to_string(remaining()) + " remain");
    }

    template <class T>
    T read_pod(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }

    std::string read_string(const char* what) {
        const auto n = read_pod<std::uint64_t>(what);
        need(n, what);  // before allocating: a length larger than the file is a corrupt length
        std::string s(reinterpret_cast<const char*>(base_ + pos_), n);
        pos_ += n;
        return s;
    }

    /// Smallest encoded size of one value of type @p t (bounds array counts before allocation).
    static std::uint64_t min_size(value_type t) {
        switch (t) {
            case value_type::u8: case value_type::i8: case value_type::boolean: return 1;
            case value_type::u16: case value_type::i16: return 2;
            case value_type::u32: case value_type::i32: case value_type::f32: return 4;
            case value_type::u64: case value_type::i64: case value_type::f64: case value_type::string: return 8;
            case value_type::array: return 12;
        }
        return 0;
    }

    value read_value(value_type t, const std::string& key, int depth) {
        const char* what = "a metadata value";
        switch (t) {
            case value_type::u8: return {std::uint64_t{read_pod<std::uint8_t>(what)}};
            case value_type::i8: return {std::int64_t{read_pod<std::int8_t>(what)}};
            case value_type::u16: return {std::uint64_t{read_pod<std::uint16_t>(what)}};
            case value_type::i16: return {std::int64_t{read_pod<std::int16_t>(what)}};
            case value_type::u32: return {std::uint64_t{read_pod<std::uint32_t>(what)}};
            case value_type::i32: return {std::int64_t{read_pod<std::int32_t>(what)}};
            case value_type::u64: return {read_pod<std::uint64_t>(what)};
            case value_type::i64: return {read_pod<std::int64_t>(what)};
            case value_type::f32: return {double{read_pod<float>(what)}};
            case value_type::f64: return {read_pod<double>(what)};
            case value_type::boolean: return {read_pod<std::uint8_t>(what) != 0};
            case value_type::string: return {read_string("a metadata string")};
            case value_type::array: {
                if (depth >= max_array_depth)
                    throw std::runtime_error("gguf: metadata key " + key + ": arrays nested deeper than " + std::to_string(max_array_depth) + " levels");
                array_value a;
                a.element_type = static_cast<value_type>(read_pod<std::uint32_t>("an array element type"));
                if (min_size(a.element_type) == 0)
                    throw std::runtime_error("gguf: metadata key " + key + ": unknown array element type " +
                                             std::to_string(static_cast<std::uint32_t>(a.element_type)));
                const auto n = read_pod<std::uint64_t>("an array length");
                if (n > remaining() / min_size(a.element_type))
                    throw std::runtime_error("gguf: metadata key " + key + ": array of " + std::to_string(n) + " elements does not fit the " +
                                             std::to_string(remaining()) + " bytes left in the file");
                a.elements.reserve(n);
                for (std::uint64_t i = 0; i < n; ++i) a.elements.push_back(read_value(a.element_type, key, depth + 1));
                return {std::move(a)};
            }
        }
        throw std::runtime_error("gguf: metadata key " + key + ": unknown metadata value type " + std::to_string(static_cast<std::uint32_t>(t)));
    }

    void parse() {
        if (std::memcmp(base_, "GGUF", 4) != 0) throw std::runtime_error("gguf: bad magic (not a GGUF file)");
        pos_ = 4;
        const auto version = read_pod<std::uint32_t>("the version");
        if (version < 2 || version > 3) throw std::runtime_error("gguf: unsupported version " + std::to_string(version));
        const auto n_tensors = read_pod<std::uint64_t>("the tensor count");
        const auto n_kv = read_pod<std::uint64_t>("the metadata count");
        if (n_kv > remaining() / 13)  // key length, one key byte, type, one value byte
            throw std::runtime_error("gguf: metadata count " + std::to_string(n_kv) + " does not fit the file");
        for (std::uint64_t i = 0; i < n_kv; ++i) {
            auto key = read_string("a metadata key");
            auto t = static_cast<value_type>(read_pod<std::uint32_t>("a metadata type"));
            value v = read_value(t, key, 0);
            if (!metadata_.emplace(key, std::move(v)).second) throw std::runtime_error("gguf: duplicate metadata key " + key);
        }
        if (n_tensors > remaining() / 24)  // name length, dimension count, type, offset
            throw std::runtime_error("gguf: tensor count " + std::to_string(n_tensors) + " does not fit the file");
        tensors_.reserve(n_tensors);
        for (std::uint64_t i = 0; i < n_tensors; ++i) {
            tensor_info ti;
            ti.name = read_string("a tensor name");
            const auto n_dims = read_pod<std::uint32_t>("a tensor's dimension count");
            if (n_dims == 0 || n_dims > max_dims)
                throw std::runtime_error("gguf: tensor " + ti.name + " has " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
            for (std::uint32_t d = 0; d < n_dims; ++d) ti.dims.push_back(read_pod<std::uint64_t>("a tensor dimension"));
            ti.type = static_cast<tensor_type>(read_pod<std::uint32_t>("a tensor type"));
            ti.offset = read_pod<std::uint64_t>("a tensor offset");
            ti.bytes = stored_bytes(ti);
            tensors_.push_back(std::move(ti));
        }
        std::uint64_t alignment = 32;
        if (has("general.alignment")) {
            alignment = get_uint("general.alignment");
            if (alignment == 0 || alignment > max_alignment || (alignment & (alignment - 1)) != 0)
                throw std::runtime_error("gguf: general.alignment " + std::to_string(alignment) + " is not a power of two up to 1 MiB");
        }
        const std::uint64_t data_start = (pos_ + alignment - 1) / alignment * alignment;
        if (data_start > size_) throw std::runtime_error("gguf: truncated file: no room for the tensor data after the header");
        place_tensors(data_start, alignment);
    }

    /// Bytes a tensor's type and shape need; throws for an unknown type, a zero or
    /// overflowing dimension, or an innermost dimension that is not a whole number of blocks.
    static std::uint64_t stored_bytes(const tensor_info& t) {
        const type_traits traits = traits_of(t.type);
        if (traits.elements == 0)
            throw std::runtime_error("gguf: tensor " + t.name + " has unknown ggml type " + std::to_string(static_cast<std::uint32_t>(t.type)));
        std::uint64_t elements = 1;
        for (std::uint64_t d : t.dims) {
            if (d == 0) throw std::runtime_error("gguf: tensor " + t.name + " has a dimension of 0");
            if (elements > (std::numeric_limits<std::uint64_t>::max() >> 8) / d)
                throw std::runtime_error("gguf: tensor " + t.name + "'s dimensions overflow a 64-bit element count");
            elements *= d;
        }
        if (t.dims[0] % traits.elements != 0)
            throw std::runtime_error("gguf: tensor " + t.name + ": its first dimension " + std::to_string(t.dims[0]) +
                                     " is not a multiple of its type's block of " + std::to_string(traits.elements));
        return elements / traits.elements * traits.bytes;
    }

    /// Checks every tensor's range [offset, offset + bytes) against the file, the alignment and the
    /// other tensors (in offset order they tile the data section, each starting where the previous
    /// one ends, rounded up to the alignment), then points each tensor into the mapping.
    void place_tensors(std::uint64_t data_start, std::uint64_t alignment) {
        const std::uint64_t data_bytes = size_ - data_start;
        std::vector<tensor_info*> by_offset;
        for (auto& t : tensors_) {
            if (t.offset % alignment != 0)
                throw std::runtime_error("gguf: tensor " + t.name + " offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                                         std::to_string(alignment));
            if (t.offset > data_bytes || t.bytes > data_bytes - t.offset)
                throw std::runtime_error("gguf: tensor " + t.name + " (" + std::to_string(t.bytes) + " bytes at offset " + std::to_string(t.offset) +
                                         ") runs past the end of the file (" + std::to_string(data_bytes) + " bytes of tensor data)");
            by_offset.push_back(&t);
        }
        std::sort(by_offset.begin(), by_offset.end(), [](const tensor_info* a, const tensor_info* b) { return a->offset < b->offset; });
        std::uint64_t expected = 0;  // where the next tensor starts
        for (const tensor_info* t : by_offset) {
            if (t->offset != expected)
                throw std::runtime_error("gguf: tensor " + t->name + " starts at offset " + std::to_string(t->offset) + ", but the tensor before it ends at " +
                                         std::to_string(expected) + (t->offset < expected ? " (overlap" : " (gap") +
                                         ": its type or shape does not match the stored data)");
            expected = (t->offset + t->bytes + alignment - 1) / alignment * alignment;
        }
        const std::uint64_t end = by_offset.empty() ? 0 : by_offset.back()->offset + by_offset.back()->bytes;
        if (data_bytes > expected)
            throw std::runtime_error("gguf: " + std::to_string(data_bytes - end) + " bytes follow the last tensor (type or shape mismatch?)");
        std::set<std::string_view> names;
        for (auto& t : tensors_) {
            if (!names.insert(t.name).second) throw std::runtime_error("gguf: duplicate tensor " + t.name);
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
