// SPDX-License-Identifier: Apache-2.0
/// @file csr_quality.cpp
/// @brief CSR on SmolLM2-135M-Instruct (docs/methods.md 13): fits the per-layer, per-KV-head key and
///        value dictionaries offline from calibration K/V the engine records, then measures the
///        continuation perplexity with every prompt entry stored as a sparse code
///        (kvcompact::codecs::sparse_cache) against the full cache and against eviction presets that
///        keep the same bytes.
///
/// Calibration: --prompts essay passages of --tokens tokens from token --offset on (text the
/// evaluation does not read), prefilled with the full cache; every --stride-th token's post-RoPE key
/// and value of every (layer, KV head) is a sample; kvcompact::calibration::learn_dictionary fits
/// --atoms atoms for --terms-term codes in --iterations updates. The dictionaries are written to
/// --dictionary (named after the model and its weights' fingerprint). With --load-dictionary FILE the
/// calibration is skipped and FILE's dictionaries are used (a file of another model is refused).
/// Evaluation (kv_quality's protocol): the --ppl-context-token essay prefix (tokens 0..) is prefilled
/// with the full cache, then the cache is replaced by codes (CSR) or compressed by an eviction preset
/// to the same bytes as the codes at fp16 (budget = T * bits / 16 slots per head), and the next
/// --continuation tokens are teacher-forced; new tokens are coded as they arrive.
///
/// The coded cache is examples/smollm2's sparse_backend (the --preset csr of smollm2_decode).
///
/// Usage: csr_quality --essays DIR [--model FILE] [--dictionary FILE | --load-dictionary FILE] [--prompts 4] [--tokens 1024]
///                    [--offset 16384] [--stride 2] [--atoms 256] [--terms 4] [--iterations 6]
///                    [--ppl-context 1024] [--continuation 64] [--presets snapkv,streaming_llm,h2o]

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <kvcompact/calibration/dictionary_learning.hpp>
#include <kvcompact/codecs/sparse_cache.hpp>
#include <kvcompact/kvcompact.hpp>

#include "engine.hpp"
#include "kv_backend.hpp"
#include "kvcompact_backend.hpp"
#include "loaded_model.hpp"
#include "model.hpp"
#include "options.hpp"
#include "sparse_backend.hpp"

namespace {

using namespace smollm2;
using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

struct options {
    std::string model_path, essays_dir, dictionary, load_dictionary;
    int prompts = 4, tokens = 1024, offset = 16384, stride = 2, atoms = 256, terms = 4, iterations = 6, ppl_context = 1024, continuation = 64;
    std::vector<std::string> presets{"snapkv", "streaming_llm", "h2o"};
};

options parse(int argc, char** argv) {
    options o;
    o.model_path = model_path_from_environment();
    const std::map<std::string, std::string*> texts{{"--model", &o.model_path}, {"--essays", &o.essays_dir}, {"--dictionary", &o.dictionary},
                                                  {"--load-dictionary", &o.load_dictionary}};
    const std::map<std::string, int*> counts{{"--prompts", &o.prompts},       {"--tokens", &o.tokens},         {"--offset", &o.offset},
                                             {"--stride", &o.stride},         {"--atoms", &o.atoms},           {"--terms", &o.terms},
                                             {"--iterations", &o.iterations}, {"--ppl-context", &o.ppl_context}, {"--continuation", &o.continuation}};
    parse_option_pairs("csr_quality", argc, argv, [&](const std::string& a, const std::string& v) {
        if (const auto t = texts.find(a); t != texts.end()) *t->second = v;
        else if (const auto c = counts.find(a); c != counts.end()) *c->second = std::stoi(v);
        else if (a == "--presets") o.presets = split_list(v);
        else return false;
        return true;
    });
    if (o.model_path.empty() || o.essays_dir.empty()) usage_error("csr_quality", "--essays and --model (or KVCOMPACT_SMOLLM2_GGUF) are required");
    if (o.prompts < 1 || o.tokens < 2 || o.stride < 1 || o.atoms < 1 || o.terms < 1 || o.continuation < 1) usage_error("csr_quality", "counts must be positive");
    return o;
}

/// Records calibration K/V (the essays from token o.offset on), fits every dictionary, writes them to
/// o.dictionary (when given) and prints the calibration and the fit's errors per layer.
kvcompact::codecs::dictionary_set fit_dictionaries(const options& o, const loaded_model& loaded, const std::vector<token_id>& text, const std::string& model) {
    const auto& c = loaded.config;
    const auto& w = loaded.weights;
    const int L = c.n_layers, H = c.n_kv_heads, D = c.head_dim;
    auto t0 = clock_type::now();
    std::vector<std::vector<float>> samples(static_cast<std::size_t>(L * H * 2));  // [layer][head][key, value]
    for (int n = 0; n < o.prompts; ++n) {
        const auto begin = text.begin() + o.offset + static_cast<std::ptrdiff_t>(n) * o.tokens;
        const std::vector<token_id> tokens(begin, begin + o.tokens);
        full_kv_backend full(L, c.n_heads, H, D, o.tokens);
        engine eng(c, w, full);
        (void)eng.forward(tokens);
        for (int l = 0; l < L; ++l)
            for (int h = 0; h < H; ++h)
                for (int j = 0; j < o.tokens; j += o.stride) {
                    auto& keys = samples[static_cast<std::size_t>((l * H + h) * 2)];
                    auto& values = samples[static_cast<std::size_t>((l * H + h) * 2 + 1)];
                    keys.insert(keys.end(), full.cache().key(l, h, j), full.cache().key(l, h, j) + D);
                    values.insert(values.end(), full.cache().value(l, h, j), full.cache().value(l, h, j) + D);
                }
    }
    const double record_s = seconds_since(t0);
    t0 = clock_type::now();
    auto set = kvcompact::codecs::dictionary_set::zeros(model, L, H, D, o.atoms);
    std::vector<double> first_error(samples.size()), last_error(samples.size());
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < L * H * 2; ++i) {
        const auto fit = kvcompact::calibration::learn_dictionary(samples[static_cast<std::size_t>(i)], D, o.atoms, o.terms, o.iterations,
                                                                  static_cast<std::uint32_t>(1000 + i));
        std::copy(fit.atoms.begin(), fit.atoms.end(), set.atoms_of(i / (2 * H), i / 2 % H, static_cast<kvcompact::codecs::entry_half>(i % 2)));
        first_error[static_cast<std::size_t>(i)] = fit.error.front();
        last_error[static_cast<std::size_t>(i)] = fit.error.back();
    }
    const double fit_s = seconds_since(t0);
    if (!o.dictionary.empty()) set.save(o.dictionary);
    std::printf("Calibration: %d passages of %d tokens from token %d, every %d-th token: %zu samples per dictionary; "
                "recording %.1f s, fit %.1f s (N = %d atoms, s = %d terms, %d updates)\n\n",
                o.prompts, o.tokens, o.offset, o.stride, samples[0].size() / static_cast<std::size_t>(D), record_s, fit_s, o.atoms, o.terms,
                o.iterations);
    std::printf("| layer | key rel. error (start -> fitted) | value rel. error (start -> fitted) |\n|---|---|---|\n");
    for (int l = 0; l < L; ++l) {
        double k0 = 0, k1 = 0, v0 = 0, v1 = 0;
        for (int h = 0; h < H; ++h) {
            k0 += first_error[static_cast<std::size_t>((l * H + h) * 2)] / H, k1 += last_error[static_cast<std::size_t>((l * H + h) * 2)] / H;
            v0 += first_error[static_cast<std::size_t>((l * H + h) * 2 + 1)] / H, v1 += last_error[static_cast<std::size_t>((l * H + h) * 2 + 1)] / H;
        }
        std::printf("| %d | %.3f -> %.3f | %.3f -> %.3f |\n", l, k0, k1, v0, v1);
    }

    std::printf("\n");
    return set;
}

double nll(const std::vector<float>& logits, token_id target) {
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float l : logits) sum += std::exp(static_cast<double>(l - mx));
    return std::log(sum) + mx - logits[static_cast<std::size_t>(target)];
}

}  // namespace

int main(int argc, char** argv) try {
    const options o = parse(argc, argv);
    const loaded_model loaded(o.model_path);
    const auto& c = loaded.config;
    const auto& w = loaded.weights;
    const auto& signature = loaded.signature;
    const std::string model = signature.name + " " + signature.fingerprint;
    const auto text = loaded.essay_tokens(o.essays_dir);
    if (static_cast<std::size_t>(o.offset) + static_cast<std::size_t>(o.prompts) * o.tokens > text.size()) throw std::runtime_error("essays too short");
    const int L = c.n_layers, H = c.n_kv_heads, D = c.head_dim;

    // 1. calibration samples and the dictionary fit (or a fitted set from --load-dictionary)
    std::printf("# CSR on %s\n\n", model.c_str());
    const auto set = o.load_dictionary.empty() ? fit_dictionaries(o, loaded, text, model) : kvcompact::codecs::dictionary_set::load(o.load_dictionary);
    if (!o.load_dictionary.empty()) std::printf("Dictionaries: %s (N = %d atoms)\n", o.load_dictionary.c_str(), static_cast<int>(set.atoms));

    // 2. evaluation
    const std::vector<token_id> prompt(text.begin(), text.begin() + o.ppl_context);
    const std::vector<token_id> cont(text.begin() + o.ppl_context, text.begin() + o.ppl_context + o.continuation);
    const int capacity = o.ppl_context + o.continuation, window = 32;
    full_kv_backend prefilled(L, c.n_heads, H, D, capacity);
    engine first(c, w, prefilled);
    const auto prompt_logits = first.forward(prompt, o.ppl_context);
    const auto evaluate = [&](kv_backend& backend) {
        engine eng(c, w, backend, static_cast<std::int32_t>(prompt.size()));
        const auto all = eng.forward_all(cont);
        const auto vocab = static_cast<std::size_t>(c.vocab);
        double total = nll(prompt_logits, cont[0]);
        for (std::size_t i = 1; i < cont.size(); ++i)
            total += nll(std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>((i - 1) * vocab), all.begin() + static_cast<std::ptrdiff_t>(i * vocab)),
                         cont[i]);
        return std::exp(total / static_cast<double>(cont.size()));
    };
    full_kv_backend full(L, c.n_heads, H, D, capacity);
    full.restore(prefilled.cache());
    const double full_ppl = evaluate(full);
    const auto t0 = clock_type::now();
    sparse_backend sparse(set, o.terms, model, L, c.n_heads, H, D, capacity);
    sparse.restore(prefilled.cache());
    const double sparse_ppl = evaluate(sparse);
    const double bits = sparse.codes().stored_bits_per_element(), packed = sparse.codes().packed_bits_per_element();
    std::printf("\nContinuation perplexity (%d-token essay prefix, next %d tokens teacher-forced):\n\n", o.ppl_context, o.continuation);
    std::printf("| cache | bits per K/V element | share of an fp16 cache | ppl | ppl / full |\n|---|---|---|---|---|\n");
    std::printf("| full | 16 (fp16) | 100%% | %.3f | 1.000 |\n", full_ppl);
    std::printf("| csr (N = %d, s = %d; %.1f s) | %.2f stored (16-bit index + fp16 weight), %.2f packed | %.1f%% | %.3f | %.3f |\n", static_cast<int>(set.atoms), o.terms,
                seconds_since(t0), bits, packed, 100.0 * bits / 16.0, sparse_ppl, sparse_ppl / full_ppl);
    const long budget = std::max(1L, std::lround(static_cast<double>(o.ppl_context) * bits / 16.0));
    for (const auto& name : o.presets) {
        kvcompact::policies::preset_options preset{budget, static_cast<kvcompact::index_t>(o.ppl_context), window};
        auto backend = make_kvcompact_backend(name, preset, L, c.n_heads, H, D, capacity);
        backend->restore(prefilled.cache());
        const query_window& all_rows = first.last_window();
        const int rows = backend->window_rows(o.ppl_context, window);  // the policy's kvcompact::window_need
        query_window last;
        last.rows = rows;
        last.q.resize(static_cast<std::size_t>(L) * c.n_heads * rows * D);
        for (int l = 0; l < L; ++l)
            for (int g = 0; g < c.n_heads; ++g)
                std::copy_n(all_rows.q.data() + ((static_cast<std::size_t>(l) * c.n_heads + g) * all_rows.rows + (all_rows.rows - rows)) * D,
                            static_cast<std::size_t>(rows) * D, last.q.data() + (static_cast<std::size_t>(l) * c.n_heads + g) * rows * D);
        for (int r = 0; r < rows; ++r) last.positions.push_back(all_rows.positions[static_cast<std::size_t>(all_rows.rows - rows + r)]);
        backend->finish_prefill(last);
        const double ppl = evaluate(*backend);
        std::printf("| %s, %ld of %d prompt slots (same bytes as csr at fp16) | 16 | %.1f%% | %.3f | %.3f |\n", name.c_str(), budget, o.ppl_context,
                    100.0 * static_cast<double>(budget) / o.ppl_context, ppl, ppl / full_ppl);
        std::fflush(stdout);
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "csr_quality: %s\n", e.what());
    return 1;
}
