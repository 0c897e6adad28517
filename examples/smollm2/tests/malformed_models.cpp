// SPDX-License-Identifier: Apache-2.0
// Issue 14.3: the SmolLM2 engine's loader (gguf.hpp, model.hpp, tokenizer.hpp, dequant.hpp) on
// malformed model files. The test writes a small synthetic llama model in GGUF itself (F32, Q8_0 and
// Q4_1 tensors, a byte-level vocabulary) and checks that it loads and runs; then it loads a corpus of
// mutations of it, and, when KVCOMPACT_SMOLLM2_GGUF names the real SmolLM2 file, of that file too.
// Every mutation must end in a std::runtime_error whose message says what is wrong, in the loader's
// words (none of vector::reserve, basic_string::_M_create, stoi, std::bad_alloc ...): no crash (ASan
// and UBSan builds run it too), no hang (ctest's TIMEOUT), no file loaded silently with garbage.
// Random byte flips in the header end either in a clean load or in such an error.
#include "../engine.hpp"
#include "../gguf.hpp"
#include "../kv_backend.hpp"
#include "../model.hpp"
#include "../tokenizer.hpp"

#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

namespace gguf = smollm2::gguf;
using gguf::value_type;

namespace {

// ---- a GGUF writer -----------------------------------------------------------------------------

/// One tensor of a model description: its directory entry and stored bytes.
struct tensor_desc {
  std::string name;
  std::vector<std::uint64_t> dims;
  std::uint32_t type = 0;
  std::vector<std::uint8_t> data;
};

/// One metadata entry: key, type tag and value (arrays: element type and elements).
struct metadata_desc {
  std::string key;
  value_type type;
  gguf::value value;
};

/// A whole file: written by write(), which tiles the tensors with the alignment (as llama.cpp's
/// writers do) and records where the fields a byte-level mutation patches ended up.
struct model_desc {
  std::uint32_t version = 3;
  std::vector<metadata_desc> metadata;
  std::vector<tensor_desc> tensors;
  std::uint64_t alignment = 32;

  struct positions {
    std::vector<std::size_t> tensor_offset;  // byte position of each tensor's offset field
    std::vector<std::size_t> tensor_type;    // ... of its type field
    std::vector<std::size_t> tensor_dims;    // ... of its first dimension
    std::vector<std::size_t> tensor_data;    // ... of its data
    std::size_t tensor_count = 0, metadata_count = 0;
  };

  metadata_desc* find(const std::string& key) {
    for (auto& m : metadata)
      if (m.key == key) return &m;
    return nullptr;
  }
  void set(const std::string& key, value_type type, gguf::value v) {
    if (auto* m = find(key)) *m = {key, type, std::move(v)};
    else metadata.push_back({key, type, std::move(v)});
  }
  void erase(const std::string& key) { std::erase_if(metadata, [&](const metadata_desc& m) { return m.key == key; }); }
  tensor_desc& tensor(const std::string& name) {
    for (auto& t : tensors)
      if (t.name == name) return t;
    throw std::logic_error("test: no tensor " + name);
  }

  std::vector<std::uint8_t> write(positions* where = nullptr) const {
    std::vector<std::uint8_t> out;
    positions at;
    auto raw = [&](const void* p, std::size_t n) { out.insert(out.end(), static_cast<const std::uint8_t*>(p), static_cast<const std::uint8_t*>(p) + n); };
    auto u32 = [&](std::uint32_t v) { raw(&v, 4); };
    auto u64 = [&](std::uint64_t v) { raw(&v, 8); };
    auto str = [&](const std::string& s) {
      u64(s.size());
      raw(s.data(), s.size());
    };
    std::function<void(value_type, const gguf::value&)> value = [&](value_type t, const gguf::value& v) {
      switch (t) {
        case value_type::u8: { const auto x = static_cast<std::uint8_t>(v.as_uint()); raw(&x, 1); break; }
        case value_type::i8: { const auto x = static_cast<std::int8_t>(v.as_uint()); raw(&x, 1); break; }
        case value_type::u16: { const auto x = static_cast<std::uint16_t>(v.as_uint()); raw(&x, 2); break; }
        case value_type::i16: { const auto x = static_cast<std::int16_t>(v.as_uint()); raw(&x, 2); break; }
        case value_type::u32: u32(static_cast<std::uint32_t>(v.as_uint())); break;
        case value_type::i32: { const auto x = static_cast<std::int32_t>(v.as_uint()); raw(&x, 4); break; }
        case value_type::u64: case value_type::i64: u64(v.as_uint()); break;
        case value_type::f32: { const auto x = static_cast<float>(v.as_double()); raw(&x, 4); break; }
        case value_type::f64: { const double x = v.as_double(); raw(&x, 8); break; }
        case value_type::boolean: { const std::uint8_t x = std::get<bool>(v.data) ? 1 : 0; raw(&x, 1); break; }
        case value_type::string: str(v.as_string()); break;
        case value_type::array: {
          const auto& a = v.as_array();
          u32(static_cast<std::uint32_t>(a.element_type));
          u64(a.elements.size());
          for (const auto& e : a.elements) value(a.element_type, e);
          break;
        }
      }
    };
    raw("GGUF", 4);
    u32(version);
    at.tensor_count = out.size();
    u64(tensors.size());
    at.metadata_count = out.size();
    u64(metadata.size());
    for (const auto& m : metadata) {
      str(m.key);
      u32(static_cast<std::uint32_t>(m.type));
      value(m.type, m.value);
    }
    std::uint64_t offset = 0;
    for (const auto& t : tensors) {
      str(t.name);
      u32(static_cast<std::uint32_t>(t.dims.size()));
      at.tensor_dims.push_back(out.size());
      for (auto d : t.dims) u64(d);
      at.tensor_type.push_back(out.size());
      u32(t.type);
      at.tensor_offset.push_back(out.size());
      u64(offset);
      offset = (offset + t.data.size() + alignment - 1) / alignment * alignment;
    }
    out.resize((out.size() + alignment - 1) / alignment * alignment, 0);
    for (const auto& t : tensors) {
      at.tensor_data.push_back(out.size());
      raw(t.data.data(), t.data.size());
      out.resize((out.size() + alignment - 1) / alignment * alignment, 0);
    }
    if (where) *where = at;
    return out;
  }
};

gguf::value uint_value(std::uint64_t v) { return {v}; }
gguf::value float_value(double v) { return {v}; }
gguf::value string_value(std::string s) { return {std::move(s)}; }
gguf::value array_value(value_type element, std::vector<gguf::value> elements) { return {gguf::array_value{element, std::move(elements)}}; }

// ---- the synthetic model ---------------------------------------------------------------------------

constexpr std::uint64_t hidden = 32, heads = 2, kv_heads = 1, ffn = 64;
constexpr std::uint32_t f32 = 0, q4_1 = 3, q8_0 = 8;

/// GPT-2's printable code point of byte @p b, as UTF-8.
std::string byte_symbol(std::uint32_t b, std::uint32_t& next) {
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
  const std::uint32_t cp = printable ? b : next++;
  std::string s;
  smollm2::unicode::append_utf8(s, cp);
  return s;
}

std::vector<std::uint8_t> f32_data(std::uint64_t count, std::mt19937& rng, float scale) {
  std::vector<std::uint8_t> out(count * 4);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (std::uint64_t i = 0; i < count; ++i) {
    const float x = u(rng);
    std::memcpy(out.data() + i * 4, &x, 4);
  }
  return out;
}
// Q8_0 blocks: fp16 scale 1/64 then 32 random int8.
std::vector<std::uint8_t> q8_0_data(std::uint64_t count, std::mt19937& rng) {
  std::vector<std::uint8_t> out;
  for (std::uint64_t b = 0; b < count / 32; ++b) {
    out.push_back(0x00), out.push_back(0x24);  // 0x2400 = 2^-6
    for (int j = 0; j < 32; ++j) out.push_back(static_cast<std::uint8_t>(rng() % 256));
  }
  return out;
}
// Q4_1 blocks: fp16 scale 1/64, fp16 minimum -1/8, 16 bytes of nibbles.
std::vector<std::uint8_t> q4_1_data(std::uint64_t count, std::mt19937& rng) {
  std::vector<std::uint8_t> out;
  for (std::uint64_t b = 0; b < count / 32; ++b) {
    out.push_back(0x00), out.push_back(0x24);
    out.push_back(0x00), out.push_back(0xb0);  // 0xb000 = -2^-3
    for (int j = 0; j < 16; ++j) out.push_back(static_cast<std::uint8_t>(rng() % 256));
  }
  return out;
}

model_desc synthetic_model() {
  model_desc m;
  std::vector<gguf::value> tokens, types;
  std::uint32_t next = 256;
  for (std::uint32_t b = 0; b < 256; ++b) tokens.push_back(string_value(byte_symbol(b, next))), types.push_back(uint_value(1));
  for (const char* special : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) tokens.push_back(string_value(special)), types.push_back(uint_value(3));
  const std::uint64_t vocab = tokens.size();
  m.set("general.architecture", value_type::string, string_value("llama"));
  m.set("llama.block_count", value_type::u32, uint_value(2));
  m.set("llama.context_length", value_type::u32, uint_value(256));
  m.set("llama.embedding_length", value_type::u32, uint_value(hidden));
  m.set("llama.feed_forward_length", value_type::u32, uint_value(ffn));
  m.set("llama.attention.head_count", value_type::u32, uint_value(heads));
  m.set("llama.attention.head_count_kv", value_type::u32, uint_value(kv_heads));
  m.set("llama.rope.freq_base", value_type::f32, float_value(10000.0));
  m.set("llama.rope.dimension_count", value_type::u32, uint_value(hidden / heads));
  m.set("llama.attention.layer_norm_rms_epsilon", value_type::f32, float_value(1e-5));
  m.set("tokenizer.ggml.model", value_type::string, string_value("gpt2"));
  m.set("tokenizer.ggml.pre", value_type::string, string_value("smollm"));
  m.set("tokenizer.ggml.tokens", value_type::array, array_value(value_type::string, tokens));
  m.set("tokenizer.ggml.token_type", value_type::array, array_value(value_type::i32, types));
  m.set("tokenizer.ggml.merges", value_type::array, array_value(value_type::string, {string_value("h e"), string_value("l l")}));
  m.set("tokenizer.ggml.eos_token_id", value_type::u32, uint_value(vocab - 1));
  std::mt19937 rng(14);
  const std::uint64_t kv = kv_heads * hidden / heads;
  m.tensors.push_back({"token_embd.weight", {hidden, vocab}, f32, f32_data(hidden * vocab, rng, 1.0f)});
  m.tensors.push_back({"output_norm.weight", {hidden}, f32, f32_data(hidden, rng, 1.0f)});
  for (int l = 0; l < 2; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    m.tensors.push_back({p + "attn_norm.weight", {hidden}, f32, f32_data(hidden, rng, 1.0f)});
    m.tensors.push_back({p + "attn_q.weight", {hidden, hidden}, q8_0, q8_0_data(hidden * hidden, rng)});
    m.tensors.push_back({p + "attn_k.weight", {hidden, kv}, q4_1, q4_1_data(hidden * kv, rng)});
    m.tensors.push_back({p + "attn_v.weight", {hidden, kv}, q8_0, q8_0_data(hidden * kv, rng)});
    m.tensors.push_back({p + "attn_output.weight", {hidden, hidden}, f32, f32_data(hidden * hidden, rng, 0.2f)});
    m.tensors.push_back({p + "ffn_norm.weight", {hidden}, f32, f32_data(hidden, rng, 1.0f)});
    m.tensors.push_back({p + "ffn_gate.weight", {hidden, ffn}, q4_1, q4_1_data(hidden * ffn, rng)});
    m.tensors.push_back({p + "ffn_up.weight", {hidden, ffn}, q8_0, q8_0_data(hidden * ffn, rng)});
    m.tensors.push_back({p + "ffn_down.weight", {ffn, hidden}, f32, f32_data(ffn * hidden, rng, 0.2f)});
  }
  return m;
}

// ---- loading -----------------------------------------------------------------------------------------

/// A file in the temporary directory, removed when this goes out of scope.
struct temp_file {
  std::filesystem::path path;
  explicit temp_file(const std::vector<std::uint8_t>& bytes) {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() / ("kvcompact_gguf_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".gguf");
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("test: cannot write " + path.string());
  }
  ~temp_file() { std::filesystem::remove(path); }
  temp_file(const temp_file&) = delete;
  temp_file& operator=(const temp_file&) = delete;
};

/// Everything main.cpp loads from a model file, and a short generation through the engine.
struct loaded_model {
  gguf::file file;
  smollm2::model_config config;
  smollm2::tokenizer tokenizer;
  smollm2::model_weights weights;
  explicit loaded_model(const std::string& path)
      : file(path), config(smollm2::model_config::from_gguf(file)), tokenizer(file), weights(smollm2::model_weights::from_gguf(file, config)) {}
  /// Logits after a prompt (the engine's forward pass over a full cache).
  std::vector<float> run(const std::string& text) {
    const auto ids = tokenizer.encode(text);
    smollm2::full_kv_backend backend(config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim, static_cast<int>(ids.size()) + 1);
    smollm2::engine engine(config, weights, backend);
    return engine.forward(ids);
  }
};

/// Words of a raw C++ library message that must never reach the user.
bool is_raw_library_message(const std::string& what) {
  for (const char* raw : {"vector::", "basic_string", "_M_", "stoi", "stol", "stod", "std::bad_alloc", "bad_array_new_length", "map::at",
                          "unordered_map::at", "bad_variant_access"})
    if (what.find(raw) != std::string::npos) return true;
  return false;
}

/// Loads @p bytes and returns the error message, or nullopt when the file loaded.
std::optional<std::string> load_error(const std::vector<std::uint8_t>& bytes) {
  const temp_file file(bytes);
  try {
    loaded_model model(file.path.string());
    (void)model.run("hi<|im_end|>");
    return std::nullopt;
  } catch (const std::runtime_error& e) {
    return std::string(e.what());
  }
}

/// The mutated file must be refused with a message that contains @p expected and is the loader's own.
void expect_refused(const std::string& name, const std::vector<std::uint8_t>& bytes, const std::string& expected) {
  BOOST_TEST_CONTEXT(name) {
    const auto error = load_error(bytes);
    BOOST_TEST_REQUIRE(error.has_value(), "the malformed file loaded");
    BOOST_TEST_MESSAGE(name << ": " << *error);
    BOOST_TEST(error->find(expected) != std::string::npos, "message \"" << *error << "\" lacks \"" << expected << "\"");
    BOOST_TEST(!is_raw_library_message(*error), "raw library message: " << *error);
  }
}

template <class T>
void patch(std::vector<std::uint8_t>& bytes, std::size_t at, T value) {
  std::memcpy(bytes.data() + at, &value, sizeof(T));
}

/// Metadata and tensor mutations that apply to any llama model description (the synthetic one and
/// the real SmolLM2 file re-written by model_desc), each with the words its error must contain.
void check_mutations(const model_desc& pristine) {
  auto refused = [&](const std::string& name, const std::function<void(model_desc&)>& mutate, const std::string& expected) {
    model_desc m = pristine;
    mutate(m);
    expect_refused(name, m.write(), expected);
  };
  auto set_uint = [](const char* key, std::uint64_t v) { return [=](model_desc& m) { m.set(key, value_type::u64, uint_value(v)); }; };
  auto set_float = [](const char* key, double v) { return [=](model_desc& m) { m.set(key, value_type::f32, float_value(v)); }; };
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  // hyper-parameters
  refused("head_count 0", set_uint("llama.attention.head_count", 0), "llama.attention.head_count is 0");
  refused("head_count_kv 0", set_uint("llama.attention.head_count_kv", 0), "llama.attention.head_count_kv is 0");
  refused("head_count_kv not dividing", set_uint("llama.attention.head_count_kv", 7), "not a multiple of head_count_kv");
  refused("block_count 0", set_uint("llama.block_count", 0), "llama.block_count is 0");
  refused("block_count 2^32 - 1", set_uint("llama.block_count", 0xffffffffu), "llama.block_count is 4294967295");
  refused("block_count above the tensors", set_uint("llama.block_count", 1000), "missing tensor blk.");
  refused("embedding_length odd", set_uint("llama.embedding_length", 33), "embedding_length");
  refused("context_length 0", set_uint("llama.context_length", 0), "llama.context_length is 0");
  refused("negative head count", [](model_desc& m) { m.set("llama.attention.head_count", value_type::i32, {std::int64_t{-2}}); }, "negative");
  refused("head_count as a string", [](model_desc& m) { m.set("llama.attention.head_count", value_type::string, string_value("9")); }, "not an integer");
  for (double eps : {nan, inf, -1e-5, 0.0}) refused("rms epsilon " + std::to_string(eps), set_float("llama.attention.layer_norm_rms_epsilon", eps), "layer_norm_rms_epsilon");
  refused("rope base NaN", set_float("llama.rope.freq_base", nan), "freq_base");
  refused("rope dimension count", set_uint("llama.rope.dimension_count", 8), "partial RoPE");
  refused("architecture", [](model_desc& m) { m.set("general.architecture", value_type::string, string_value("gpt2")); }, "unsupported architecture");
  refused("missing epsilon", [](model_desc& m) { m.erase("llama.attention.layer_norm_rms_epsilon"); }, "missing metadata key");
  // alignment
  refused("alignment 2^64 - 1", set_uint("general.alignment", ~std::uint64_t{0}), "general.alignment");
  refused("alignment 0", set_uint("general.alignment", 0), "general.alignment");
  refused("alignment 48", set_uint("general.alignment", 48), "general.alignment");
  // vocabulary
  refused("empty control token", [](model_desc& m) {
    auto& tokens = std::get<gguf::array_value>(m.find("tokenizer.ggml.tokens")->value.data).elements;
    const auto& types = std::get<gguf::array_value>(m.find("tokenizer.ggml.token_type")->value.data).elements;
    for (std::size_t i = 0; i < tokens.size(); ++i)
      if (types[i].as_uint() == 3) {
        tokens[i] = string_value("");
        break;
      }
  }, "empty text");
  refused("token types shorter", [](model_desc& m) { std::get<gguf::array_value>(m.find("tokenizer.ggml.token_type")->value.data).elements.pop_back(); }, "token_type");
  refused("tokens not strings", [](model_desc& m) {
    m.set("tokenizer.ggml.tokens", value_type::array, array_value(value_type::u32, {uint_value(1), uint_value(2)}));
  }, "tokenizer.ggml.tokens is not an array of strings");
  refused("eos outside the vocabulary", set_uint("tokenizer.ggml.eos_token_id", 1u << 30), "eos_token_id");
  // tensors
  auto last_tensor = [](model_desc& m) -> tensor_desc& { return m.tensors.back(); };
  refused("tensor with an extra dimension", [&](model_desc& m) { last_tensor(m).dims.push_back(2); }, "tensor");
  refused("tensor type changed", [](model_desc& m) { m.tensors.front().type = m.tensors.front().type == f32 ? q8_0 : f32; },
          "gguf: tensor");  // a gap, an overlap, or a range past the end, by how the size changed
  refused("tensor type -> 99", [](model_desc& m) { m.tensors.front().type = 99; }, "unknown ggml type 99");
  refused("tensor row count doubled", [](model_desc& m) { m.tensors.front().dims.back() *= 2; }, "tensor");
  refused("tensor dimension 0", [](model_desc& m) { m.tensors.front().dims[0] = 0; }, "dimension of 0");
  refused("tensor with 5 dimensions", [](model_desc& m) { m.tensors.front().dims = {1, 1, 1, 1, 1}; }, "5 dimensions");
  refused("dimensions overflowing", [](model_desc& m) { m.tensors.front().dims = {1ull << 32, 1ull << 32, 1ull << 20}; }, "overflow");
  refused("missing tensor", [](model_desc& m) { std::erase_if(m.tensors, [](const tensor_desc& t) { return t.name == "output_norm.weight"; }); },
          "missing tensor output_norm.weight");
  refused("duplicate tensor", [](model_desc& m) { m.tensors[1].name = m.tensors[2].name; }, "duplicate tensor");
  refused("NaN weight", [](model_desc& m) {
    for (auto& t : m.tensors)
      if (t.type == f32 && t.name.find("blk.") == 0) {
        patch(t.data, 4, std::numeric_limits<float>::quiet_NaN());
        break;
      }
  }, "NaN or infinite weight");
  // header structure (byte-level)
  model_desc::positions at;
  const std::vector<std::uint8_t> bytes = pristine.write(&at);
  auto patched = [&](auto change) {
    auto b = bytes;
    change(b);
    return b;
  };
  expect_refused("truncated by 1000 bytes", std::vector<std::uint8_t>(bytes.begin(), bytes.end() - 1000), "runs past the end");
  expect_refused("truncated into the last tensor", std::vector<std::uint8_t>(bytes.begin(), bytes.end() - 1 - static_cast<std::ptrdiff_t>(pristine.alignment)),
                 "runs past the end");
  expect_refused("offset wrapping", patched([&](auto& b) { patch(b, at.tensor_offset[0], ~std::uint64_t{0} - 31); }), "runs past the end");
  expect_refused("offset past the end", patched([&](auto& b) { patch(b, at.tensor_offset.back(), std::uint64_t{1} << 40); }), "runs past the end");
  expect_refused("offset misaligned", patched([&](auto& b) { patch(b, at.tensor_offset[1], std::uint64_t{4}); }), "not a multiple of the alignment");
  expect_refused("offsets overlapping", patched([&](auto& b) { patch(b, at.tensor_offset[1], std::uint64_t{0}); }), "overlap");
  expect_refused("tensor count 2^62", patched([&](auto& b) { patch(b, at.tensor_count, std::uint64_t{1} << 62); }), "tensor count");
  expect_refused("metadata count 2^62", patched([&](auto& b) { patch(b, at.metadata_count, std::uint64_t{1} << 62); }), "metadata count");
  expect_refused("bad magic", patched([](auto& b) { b[3] = 'X'; }), "bad magic");
  expect_refused("version 1", patched([](auto& b) { patch(b, 4, std::uint32_t{1}); }), "unsupported version 1");
}

/// A header whose first metadata value is an array nested @p depth levels deep.
std::vector<std::uint8_t> nested_arrays(std::size_t depth) {
  std::vector<std::uint8_t> b{'G', 'G', 'U', 'F', 3, 0, 0, 0};
  auto u32 = [&](std::uint32_t v) { b.insert(b.end(), reinterpret_cast<std::uint8_t*>(&v), reinterpret_cast<std::uint8_t*>(&v) + 4); };
  auto u64 = [&](std::uint64_t v) { b.insert(b.end(), reinterpret_cast<std::uint8_t*>(&v), reinterpret_cast<std::uint8_t*>(&v) + 8); };
  u64(0), u64(1), u64(3), b.insert(b.end(), {'a', 'r', 'r'});
  u32(9);  // array
  for (std::size_t i = 0; i < depth; ++i) u32(9), u64(1);  // element type array, one element
  u32(4), u64(0);  // innermost: an empty array of u32
  return b;
}

}  // namespace

BOOST_AUTO_TEST_CASE(the_synthetic_model_loads_and_runs) {
  const model_desc m = synthetic_model();
  const temp_file file(m.write());
  loaded_model model(file.path.string());
  BOOST_TEST(model.config.n_layers == 2);
  BOOST_TEST(model.config.head_dim == 16);
  BOOST_TEST(model.config.vocab == 259);
  const auto ids = model.tokenizer.encode("hello<|im_end|>");
  BOOST_TEST_REQUIRE(!ids.empty());
  BOOST_TEST(ids.back() == model.tokenizer.eos());
  // weights as written: F32 exactly, Q8_0 as scale x int8
  const auto& embd = m.tensors.front().data;
  for (std::size_t i = 0; i < model.weights.token_embedding.size(); ++i) {
    float x;
    std::memcpy(&x, embd.data() + i * 4, 4);
    BOOST_TEST(model.weights.token_embedding[i] == x);
  }
  const auto& q = m.tensors[3].data;  // blk.0.attn_q, Q8_0
  BOOST_TEST(model.weights.layers[0].wq[5] == static_cast<float>(static_cast<std::int8_t>(q[2 + 5])) / 64.0f);
  for (float x : model.run("hello")) BOOST_TEST(std::isfinite(x));
}

BOOST_AUTO_TEST_CASE(mutations_of_the_synthetic_model_are_refused) { check_mutations(synthetic_model()); }

BOOST_AUTO_TEST_CASE(nesting_strings_and_arrays_that_cannot_fit_are_refused) {
  expect_refused("200000 nested arrays", nested_arrays(200000), "nested deeper than 8");
  auto bytes = synthetic_model().write();
  // the first metadata key's length (byte 24) set to 2^63: no allocation of that size
  patch(bytes, 24, std::uint64_t{1} << 63);
  expect_refused("key length 2^63", bytes, "truncated file");
  // an array claiming 2^62 elements
  model_desc m = synthetic_model();
  m.metadata.insert(m.metadata.begin(), {"big", value_type::array, array_value(value_type::u64, {})});
  model_desc::positions at;
  auto b = m.write(&at);
  patch(b, 24 + 8 + 3 + 4 + 4, std::uint64_t{1} << 62);  // key length, "big", type, element type, count
  expect_refused("array of 2^62 elements", b, "does not fit");
  expect_refused("empty file", {}, "too short");
  try {
    const gguf::file missing("/nonexistent/kvcompact/model.gguf");
    BOOST_ERROR("a missing file opened");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(std::string(e.what()).find("cannot open /nonexistent/kvcompact/model.gguf") != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_CASE(every_truncation_and_random_header_flips_end_cleanly) {
  model_desc::positions at;
  const auto bytes = synthetic_model().write(&at);
  const std::size_t header = at.tensor_data.front();
  for (std::size_t cut = 0; cut < header; cut += 7) {
    const auto error = load_error(std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(cut)));
    BOOST_TEST_REQUIRE(error.has_value(), "a file cut at byte " << cut << " loaded");
    BOOST_TEST(!is_raw_library_message(*error), "cut at " << cut << ": " << *error);
  }
  std::mt19937 rng(5);
  int loaded = 0, refused = 0;
  for (int trial = 0; trial < 400; ++trial) {
    auto b = bytes;
    for (int flips = 1 + static_cast<int>(rng() % 3); flips > 0; --flips) b[rng() % header] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    const auto error = load_error(b);
    if (!error) {
      ++loaded;
      continue;
    }
    ++refused;
    BOOST_TEST(!is_raw_library_message(*error), "trial " << trial << ": " << *error);
  }
  BOOST_TEST_MESSAGE("header flips: " << loaded << " loaded, " << refused << " refused");
  BOOST_TEST(refused > 0);
}

// The real model (CI sets KVCOMPACT_SMOLLM2_GGUF): read into a model_desc, written back (which must
// load), then mutated like the synthetic one.
BOOST_AUTO_TEST_CASE(mutations_of_the_real_smollm2_model_are_refused) {
  const char* path = std::getenv("KVCOMPACT_SMOLLM2_GGUF");
  if (path == nullptr || *path == '\0') {
    BOOST_TEST_MESSAGE("KVCOMPACT_SMOLLM2_GGUF is not set: the real model's mutations are skipped");
    return;
  }
  model_desc m;
  {
    const gguf::file real(path);
    for (const auto& [key, v] : real.metadata()) {
      value_type t = value_type::string;
      if (std::holds_alternative<std::uint64_t>(v.data)) t = value_type::u64;
      else if (std::holds_alternative<std::int64_t>(v.data)) t = value_type::i64;
      else if (std::holds_alternative<double>(v.data)) t = value_type::f64;
      else if (std::holds_alternative<bool>(v.data)) t = value_type::boolean;
      else if (std::holds_alternative<gguf::array_value>(v.data)) t = value_type::array;
      if (key == "general.alignment") m.alignment = v.as_uint();
      m.metadata.push_back({key, t, v});
    }
    for (const auto& t : real.tensors()) {
      const auto* data = reinterpret_cast<const std::uint8_t*>(t.data);
      m.tensors.push_back({t.name, t.dims, static_cast<std::uint32_t>(t.type), std::vector<std::uint8_t>(data, data + t.bytes)});
    }
  }
  BOOST_TEST_REQUIRE(!load_error(m.write()).has_value(), "the real model, written back, does not load");
  check_mutations(m);
}
