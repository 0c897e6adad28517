// SPDX-License-Identifier: Apache-2.0
/// @file main.cpp
/// @brief smollm2_decode: greedy generation with SmolLM2-135M-Instruct (GGUF), streamed as it decodes,
///        optionally with a kvcompact policy managing the KV cache.
///
/// Usage: see usage_text below (`smollm2_decode --help`).
/// The model path defaults to $KVCOMPACT_SMOLLM2_GGUF (see fetch_model.sh). The calibrated presets
/// (prefixkv, xkv) read the per-layer table for --budget from --budget-file (bench/quality/budgets/); CSR
/// (--preset csr) reads its dictionaries from --dictionary (written by bench/quality/csr_quality).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "chat.hpp"
#include "engine.hpp"
#include "fingerprint.hpp"
#include "gguf.hpp"
#include "kv_backend.hpp"
#include "kvcompact_backend.hpp"
#include "layer_map_backend.hpp"
#include "model.hpp"
#include "sparse_backend.hpp"
#include "think_backend.hpp"
#include "tokenizer.hpp"

namespace {

using namespace smollm2;

/// Command-line options.
struct options {
    std::string model_path;
    std::string prompt = "What is the capital of France? Answer in one sentence.";
    std::string system{default_system_prompt};
    bool raw = false;            ///< feed the prompt without the chat template
    int max_new = 64;            ///< tokens to generate
    int threads = 0;             ///< 0: OpenMP default
    std::string preset = "full"; ///< "full", a kvcompact::policies::preset_names or calibrated_preset_names entry, or a layer_map_presets one
    double budget = 1.0;         ///< fraction of the prompt's KV kept by compression
    int window = 32;             ///< observation window / recent tokens of the preset
    std::string budget_file;     ///< per-layer budget file of the calibrated presets
    std::string dictionary;      ///< dictionary file of the csr preset
    int csr_terms = 4;           ///< (index, weight) pairs per code of the csr preset
    kvcompact::budgets::model_signature model;  ///< the loaded model's signature (set after loading; budget files)
    bool print_ids = false;
    std::string logits_out;
    bool self_check = false;
};

/// What --help prints.
constexpr const char* usage_text =
    "Usage: smollm2_decode [options]\n"
    "Greedy generation with SmolLM2-135M-Instruct (GGUF), optionally with a kvcompact policy\n"
    "managing the KV cache.\n"
    "  --model FILE        GGUF model (default: $KVCOMPACT_SMOLLM2_GGUF, see fetch_model.sh)\n"
    "  --prompt TEXT       the user's question (default: a question about France)\n"
    "  --prompt-file FILE  read the prompt from FILE\n"
    "  --raw               feed the prompt without the chat template (it must not be empty)\n"
    "  --system TEXT       system prompt of the chat template\n"
    "  --n N               tokens to generate, 0 to 1048576 (default 64)\n"
    "  --threads N         OpenMP threads, 0 (default) to 1024\n"
    "  --preset NAME       full (default) or a kvcompact preset: streaming_llm, h2o, tova, snapkv,\n"
    "                      pyramidkv, adakv, knorm, corm, corm_budgeted, windowkv, kvmerger, cam;\n"
    "                      the calibrated prefixkv, xkv (with --budget-file); the MixAttention-style\n"
    "                      caches sliding_window, mixattention; ThinK key-channel pruning after SnapKV:\n"
    "                      think_snapkv (pruning ratio 0.4), think_snapkv_r50 (0.5); CSR sparse codes\n"
    "                      of every entry: csr (with --dictionary)\n"
    "  --budget FRACTION   share of the prompt's KV kept by compression, in (0, 1] (default 1)\n"
    "  --window ROWS       observation window / recent tokens of the preset, 1 to 65536 (default 32)\n"
    "  --budget-file FILE  per-layer budget table of prefixkv / xkv (bench/quality/budgets/)\n"
    "  --dictionary FILE   dictionaries of csr, fitted on this model (bench/quality/csr_quality --dictionary)\n"
    "  --csr-terms N       (atom, weight) pairs per coded key or value of csr, 1 to 64 (default 4)\n"
    "  --print-ids         print prompt and generated token ids\n"
    "  --logits-out FILE   write the logits of every generated token (fp32) to FILE\n"
    "  --self-check        check prefill/decode consistency, no-evict presets and per-layer\n"
    "                      prefill compression against the all-layer one, then exit\n"
    "  --help              print this text and exit\n";

/// Most tokens (prompt plus generated) one run may hold.
constexpr long max_tokens = 1L << 20;

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr, "smollm2_decode: %s\n(smollm2_decode --help lists the options)\n", why.c_str());
    std::exit(2);
}

/// @return @p text converted whole by @p convert (std::stol, std::stod), nullopt when it is not a number.
template <class Convert>
auto whole_number(const std::string& text, Convert convert) -> std::optional<decltype(convert(text, nullptr))> {
    std::size_t used = 0;
    try {
        const auto value = convert(text, &used);
        if (used == text.size()) return value;
    } catch (const std::exception&) {
    }
    return std::nullopt;
}

/// @return @p text as an integer in [lo, hi]; exits with a usage error naming @p option otherwise.
long parse_integer(const std::string& option, const std::string& text, long lo, long hi) {
    const auto value = whole_number(text, [](const std::string& t, std::size_t* used) { return std::stol(t, used); });
    if (!value || *value < lo || *value > hi)
        usage(option + " wants an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + text + "'");
    return *value;
}

/// @return @p text as a number in (0, 1]; exits with a usage error naming @p option otherwise.
double parse_fraction(const std::string& option, const std::string& text) {
    const auto value = whole_number(text, [](const std::string& t, std::size_t* used) { return std::stod(t, used); });
    if (!value || !(*value > 0.0 && *value <= 1.0)) usage(option + " wants a fraction of the prompt in (0, 1], got '" + text + "'");
    return *value;
}

/// @return the contents of @p path; exits with a usage error when it cannot be read.
std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) usage("--prompt-file: cannot open '" + path + "'");
    std::stringstream ss;
    ss << in.rdbuf();
    if (in.bad()) usage("--prompt-file: cannot read '" + path + "'");
    return ss.str();
}

options parse(int argc, char** argv) {
    options o;
    if (const char* env = std::getenv("KVCOMPACT_SMOLLM2_GGUF")) o.model_path = env;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) usage("missing value for " + a);
            return argv[++i];
        };
        if (a == "--help" || a == "-h") {
            std::fputs(usage_text, stdout);
            std::exit(0);
        }
        else if (a == "--model") o.model_path = next();
        else if (a == "--prompt") o.prompt = next();
        else if (a == "--prompt-file") o.prompt = read_file(next());
        else if (a == "--system") o.system = next();
        else if (a == "--raw") o.raw = true;
        else if (a == "--n") o.max_new = static_cast<int>(parse_integer(a, next(), 0, max_tokens));
        else if (a == "--threads") o.threads = static_cast<int>(parse_integer(a, next(), 0, 1024));
        else if (a == "--preset") o.preset = next();
        else if (a == "--budget") o.budget = parse_fraction(a, next());
        else if (a == "--window") o.window = static_cast<int>(parse_integer(a, next(), 1, 65536));
        else if (a == "--budget-file") o.budget_file = next();
        else if (a == "--dictionary") o.dictionary = next();
        else if (a == "--csr-terms") o.csr_terms = static_cast<int>(parse_integer(a, next(), 1, 64));
        else if (a == "--print-ids") o.print_ids = true;
        else if (a == "--logits-out") o.logits_out = next();
        else if (a == "--self-check") o.self_check = true;
        else usage("unknown option " + a);
    }
    if (o.raw && o.prompt.empty()) usage("--raw with an empty prompt: there is no token to start from");
    if (o.model_path.empty() && o.self_check) {
        std::fprintf(stderr, "smollm2_decode --self-check: skipped, KVCOMPACT_SMOLLM2_GGUF is not set\n");
        std::exit(77);  // ctest SKIP_RETURN_CODE
    }
    if (o.model_path.empty())
        usage("no model: pass --model FILE or set KVCOMPACT_SMOLLM2_GGUF (examples/smollm2/fetch_model.sh prints a path)");
    return o;
}

/// @return slots per head that compression keeps: o.budget of the prompt, at least 1.
long budget_slots(const options& o, std::size_t prompt_length) {
    return std::max(1L, std::lround(o.budget * static_cast<double>(prompt_length)));
}

/// Creates the KV backend for @p o.preset with room for @p capacity tokens per head; a calibrated
/// preset loads its table for o.budget from o.budget_file, checked against o.model.
std::unique_ptr<kv_backend> make_backend(const options& o, const model_config& c, std::size_t prompt_length, int capacity) {
    if (o.preset == "full") return std::make_unique<full_kv_backend>(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, capacity);
    if (o.preset == "csr") {
        if (o.dictionary.empty()) usage("--preset csr needs --dictionary FILE (written by bench/quality/csr_quality --dictionary)");
        return std::make_unique<sparse_backend>(kvcompact::codecs::dictionary_set::load(o.dictionary), o.csr_terms, o.model.name + " " + o.model.fingerprint,
                                                c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, capacity);
    }
    if (is_layer_map_preset(o.preset))
        return make_layer_map_backend(o.preset, static_cast<int>(budget_slots(o, prompt_length)), c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
                                      capacity);
    kvcompact::policies::preset_options preset{budget_slots(o, prompt_length), static_cast<kvcompact::index_t>(prompt_length), o.window};
    if (is_channel_preset(o.preset)) return make_think_backend(o.preset, preset, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, capacity);
    const auto& calibrated = kvcompact::policies::calibrated_preset_names;
    kvcompact::budgets::layer_table table;
    if (std::find(calibrated.begin(), calibrated.end(), o.preset) != calibrated.end()) {
        if (o.budget_file.empty()) usage("--preset " + o.preset + " needs --budget-file FILE (bench/quality/budgets/)");
        table = kvcompact::budgets::load_layer_budgets(o.budget_file, o.model, o.budget);
        preset.layer_budgets = &table;
    }
    return make_kvcompact_backend(o.preset, preset, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, capacity);
}

/// Result of one greedy generation.
struct generation {
    std::vector<token_id> tokens;             ///< generated ids
    std::vector<std::vector<float>> logits;   ///< logits that chose each generated id
    double prefill_s = 0, compress_s = 0, decode_s = 0;  ///< wall time of the phases
    bool compressed_per_layer = false;        ///< compressed layer by layer within the prefill (compress_s 0)
    std::vector<std::int32_t> kept_positions;  ///< after prefill compression: each (layer, kv_head)'s kept positions, in order
    std::size_t kv_bytes = 0, kv_full_bytes = 0;
};

/// How generate() compresses the prompt's KV cache.
enum class prefill_compression {
    per_layer_when_supported,  ///< each layer as its prefill finishes when the backend compresses_per_layer()
    all_layers_at_end,         ///< every layer at once after the prefill (kv_backend::finish_prefill())
};

/// @return the positions of the occupied slots of every (layer, kv_head) of @p cache, concatenated.
std::vector<std::int32_t> kept_positions(const kv_cache_storage& cache) {
    std::vector<std::int32_t> kept;
    for (int l = 0; l < cache.layers; ++l)
        for (int h = 0; h < cache.kv_heads; ++h) {
            const auto first = cache.positions.begin() + static_cast<std::ptrdiff_t>(cache.slot_index(l, h, 0));
            kept.insert(kept.end(), first, first + cache.lengths[cache.head_index(l, h)]);
        }
    return kept;
}

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// Called with each generated token as soon as it is chosen (EOS included).
using token_callback = std::function<void(token_id)>;

/// Prefills @p prompt in one batch, compressing it as @p compression says, then decodes greedily until
/// EOS or @p o.max_new tokens, calling @p on_token (if set) with every token as it is generated.
generation generate(const options& o, const model_config& c, const model_weights& w, const tokenizer& tok,
                    const std::vector<token_id>& prompt, bool keep_logits, const token_callback& on_token = {},
                    prefill_compression compression = prefill_compression::per_layer_when_supported) {
    auto backend = make_backend(o, c, prompt.size(), static_cast<int>(prompt.size()) + o.max_new);
    engine eng(c, w, *backend);
    generation g;
    const int window_rows = backend->window_rows(static_cast<int>(prompt.size()), o.window);  // the policy's window_need
    g.compressed_per_layer = compression == prefill_compression::per_layer_when_supported && backend->compresses_per_layer();
    auto t0 = clock_type::now();
    auto logits = g.compressed_per_layer ? eng.forward_compressing_each_layer(prompt, window_rows) : eng.forward(prompt, window_rows);
    g.prefill_s = seconds_since(t0);
    t0 = clock_type::now();
    if (o.preset != "full" && !g.compressed_per_layer) backend->finish_prefill(eng.last_window());
    g.compress_s = seconds_since(t0);
    g.kept_positions = kept_positions(backend->cache());
    t0 = clock_type::now();
    for (int i = 0; i < o.max_new; ++i) {
        const token_id next = argmax(logits);
        g.tokens.push_back(next);
        if (on_token) on_token(next);
        if (keep_logits) g.logits.push_back(logits);
        if (next == tok.eos()) break;
        const token_id one[1] = {next};
        logits = eng.forward(one);
    }
    g.decode_s = seconds_since(t0);
    g.kv_bytes = backend->occupied_bytes();
    g.kv_full_bytes = backend->cache().full_bytes(static_cast<std::size_t>(eng.tokens_seen()));
    return g;
}

/// Feeds the prompt in chunks of @p chunk tokens, then the generated tokens one
/// by one, and returns the logits at the steps where @p reference generated.
std::vector<std::vector<float>> replay(const model_config& c, const model_weights& w,
                                       const std::vector<token_id>& prompt, const generation& reference,
                                       std::size_t chunk) {
    std::vector<token_id> all = prompt;
    all.insert(all.end(), reference.tokens.begin(), reference.tokens.end());
    full_kv_backend backend(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, static_cast<int>(all.size()));
    engine eng(c, w, backend);
    std::vector<std::vector<float>> out;
    std::size_t pos = 0;
    while (pos < all.size() && out.size() < reference.tokens.size()) {
        // prompt in chunks that stop at its end; generated tokens one at a time
        const std::size_t end = pos < prompt.size() ? std::min(prompt.size(), pos + chunk) : pos + 1;
        auto logits = eng.forward(std::span<const token_id>(all.data() + pos, end - pos));
        pos = end;
        if (pos >= prompt.size()) out.push_back(std::move(logits));
    }
    return out;
}

/// @return max |a - b| over all steps, or infinity when the step counts differ.
double max_abs_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
    if (a.size() != b.size()) return INFINITY;
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        for (std::size_t j = 0; j < a[i].size(); ++j) m = std::max(m, static_cast<double>(std::fabs(a[i][j] - b[i][j])));
    return m;
}

/// Checks (1) prefill-then-decode == token-by-token == chunked prefill, and
/// (2) kvcompact sessions whose budget never forces an eviction reproduce the
/// full-cache logits (their attention sums in another order: tolerance 1e-3), and
/// (3) compressing each layer as its prefill finishes keeps the same positions and generates the
/// same tokens as compressing every layer after the prefill (h2o and snapkv at half the prompt).
int self_check(options o, const model_config& c, const model_weights& w, const tokenizer& tok) {
    o.max_new = 16;
    o.preset = "full";
    const auto prompt = tok.encode(chat_prompt("Name three colours of the rainbow."));
    const auto ref = generate(o, c, w, tok, prompt, true);
    int failures = 0;
    auto report = [&](const std::string& what, const std::vector<std::vector<float>>& got,
                      const std::vector<token_id>& tokens) {
        const bool same_tokens = tokens == ref.tokens;
        const double diff = max_abs_diff(got, ref.logits);
        const bool ok = same_tokens && diff <= 1e-3;
        std::printf("self-check %-36s %zu steps, tokens %s, max |logit diff| = %.3g -> %s\n", what.c_str(), got.size(),
                    same_tokens ? "equal" : "DIFFER", diff, ok ? "ok" : "FAIL");
        failures += ok ? 0 : 1;
    };
    for (std::size_t chunk : {std::size_t{1}, std::size_t{5}}) {
        const auto got = replay(c, w, prompt, ref, chunk);
        std::vector<token_id> tokens;
        for (const auto& l : got) tokens.push_back(argmax(l));
        report("prefill chunk=" + std::to_string(chunk) + ":", got, tokens);
    }
    for (const char* preset : {"snapkv", "h2o", "streaming_llm"}) {
        o.preset = preset;
        // budget = the whole capacity (prompt + generated tokens): nothing is evicted
        o.budget = static_cast<double>(prompt.size() + static_cast<std::size_t>(o.max_new)) / static_cast<double>(prompt.size());
        const auto g = generate(o, c, w, tok, prompt, true);
        report(std::string("kvcompact ") + preset + " no-evict:", g.logits, g.tokens);
    }
    o.budget = 0.5;  // evicting: the per-layer compression must keep what the all-layer one keeps
    for (const char* preset : {"h2o", "snapkv"}) {
        o.preset = preset;
        const auto per_layer = generate(o, c, w, tok, prompt, true);
        const auto all_layers = generate(o, c, w, tok, prompt, true, {}, prefill_compression::all_layers_at_end);
        const bool same_kept = per_layer.kept_positions == all_layers.kept_positions;
        const bool same_tokens = per_layer.tokens == all_layers.tokens;
        const double diff = max_abs_diff(per_layer.logits, all_layers.logits);
        const bool ok = per_layer.compressed_per_layer && same_kept && same_tokens && diff <= 1e-3;
        std::printf("self-check kvcompact %-6s per-layer vs all-layer: compressed per layer %s, kept positions %s (%zu), tokens %s, "
                    "max |logit diff| = %.3g -> %s\n",
                    preset, per_layer.compressed_per_layer ? "yes" : "NO", same_kept ? "equal" : "DIFFER", per_layer.kept_positions.size(),
                    same_tokens ? "equal" : "DIFFER", diff, ok ? "ok" : "FAIL");
        failures += ok ? 0 : 1;
    }
    return failures == 0 ? 0 : 1;
}

void print_ids(const char* label, const std::vector<token_id>& ids) {
    std::printf("%s:", label);
    for (auto id : ids) std::printf(" %d", id);
    std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) try {
    options o = parse(argc, argv);
#ifdef _OPENMP
    if (o.threads > 0) omp_set_num_threads(o.threads);
#endif
    auto t0 = clock_type::now();
    const gguf::file file(o.model_path);
    const auto config = model_config::from_gguf(file);
    const tokenizer tok(file);
    const auto weights = model_weights::from_gguf(file, config);
    o.model = model_signature(file, config);
    std::fprintf(stderr, "loaded %s: %d layers, %d/%d heads, dim %d, vocab %d, in %.2f s\n", o.model_path.c_str(),
                 config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim, config.vocab, seconds_since(t0));

    if (o.self_check) return self_check(o, config, weights, tok);

    const auto prompt = tok.encode(o.raw ? o.prompt : chat_prompt(o.prompt, o.system));
    if (prompt.empty()) throw std::runtime_error("the prompt encodes to no token");
    if (static_cast<long>(prompt.size()) + o.max_new > max_tokens)
        throw std::runtime_error("the prompt has " + std::to_string(prompt.size()) + " tokens; with --n " + std::to_string(o.max_new) +
                                 " that is more than the " + std::to_string(max_tokens) + " tokens this engine holds");
    if (prompt.size() + static_cast<std::size_t>(o.max_new) > static_cast<std::size_t>(config.context_length))
        std::fprintf(stderr, "warning: %zu prompt + %d new tokens exceed the trained context of %d\n", prompt.size(),
                     o.max_new, config.context_length);
    // The answer is streamed: each token's text is written as soon as it is decoded.
    const auto g = generate(o, config, weights, tok, prompt, !o.logits_out.empty(), [&](token_id id) {
        if (id == tok.eos()) return;
        const std::string piece = tok.decode(id);
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
    });
    std::printf("\n");
    std::fflush(stdout);  // before the statistics on stderr
    if (o.print_ids) {
        print_ids("prompt_ids", prompt);
        print_ids("generated_ids", g.tokens);
    }
    if (!o.logits_out.empty()) {
        std::ofstream out(o.logits_out, std::ios::binary);
        for (const auto& l : g.logits) out.write(reinterpret_cast<const char*>(l.data()), static_cast<std::streamsize>(l.size() * sizeof(float)));
    }
    const double decode_tokens = static_cast<double>(g.tokens.size() > 0 ? g.tokens.size() - 1 : 0);
    std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tok/s)\n", prompt.size(), g.prefill_s,
                 static_cast<double>(prompt.size()) / g.prefill_s);
    std::fprintf(stderr, "decode: %.0f tokens in %.3f s (%.1f tok/s)\n", decode_tokens, g.decode_s,
                 decode_tokens / std::max(g.decode_s, 1e-9));
    if (o.preset == "csr")
        std::fprintf(stderr, "preset csr: every prompt entry coded as %d (atom, weight) pairs per key and value, in %.3f s\n", o.csr_terms, g.compress_s);
    else if (o.preset != "full" && g.compressed_per_layer)
        std::fprintf(stderr, "preset %s: budget %ld slots per head (%.0f%% of %zu prompt tokens), compress_prefill_layer within the prefill\n",
                     o.preset.c_str(), budget_slots(o, prompt.size()), 100.0 * o.budget, prompt.size());
    else if (o.preset != "full")
        std::fprintf(stderr, "preset %s: budget %ld slots per head (%.0f%% of %zu prompt tokens), compress_prefill %.3f s\n",
                     o.preset.c_str(), budget_slots(o, prompt.size()), 100.0 * o.budget, prompt.size(), g.compress_s);
    std::fprintf(stderr, "kv cache [%s]: %zu bytes occupied vs %zu full (%.1f%%)\n", o.preset.c_str(), g.kv_bytes,
                 g.kv_full_bytes, 100.0 * static_cast<double>(g.kv_bytes) / static_cast<double>(g.kv_full_bytes));
    return 0;
} catch (const std::bad_alloc&) {
    std::fprintf(stderr, "smollm2_decode: error: out of memory\n");
    return 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "smollm2_decode: error: %s\n", e.what());
    return 1;
}
