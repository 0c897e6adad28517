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
/// --code-terms 4,11 evaluates several code sizes over the same dictionaries (default: --terms).
///
/// --csv FILE writes kv_quality's rows, so bench/quality/plot_results.py puts CSR in the sweep's table
/// and plot (preset `csr`; budget = kv_kept = the share of an fp16 cache that the codes take as stored,
/// 16-bit index + fp16 weight per term; eviction presets are printed only):
///   ppl,preset,budget,ppl,kv_kept,err_layer0,...,err_layer{L-1}   (--tasks ppl: full, then csr per code size)
///   needle,preset,budget,context,depth,hit,kv_kept                  (--tasks needle: kv_quality's pass-key prompts)
///
/// Usage: csr_quality --essays DIR [--model FILE] [--dictionary FILE | --load-dictionary FILE] [--prompts 4] [--tokens 1024]
///                    [--offset 16384] [--stride 2] [--atoms 256] [--terms 4] [--iterations 6] [--code-terms 4,11]
///                    [--ppl-context 1024] [--continuation 64] [--presets snapkv,streaming_llm,h2o] [--tasks ppl (default) or ppl,needle]
///                    [--needle-contexts 2048] [--depths 0.1,0.5,0.9] [--csv FILE]

#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>
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
#include "quality_protocol.hpp"
#include "sparse_backend.hpp"

namespace {

using namespace smollm2;
using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

struct options {
    std::string model_path, essays_dir, dictionary, load_dictionary, csv;
    int prompts = 4, tokens = 1024, offset = 16384, stride = 2, atoms = 256, terms = 4, iterations = 6, ppl_context = 1024, continuation = 64;
    std::vector<double> code_terms;  ///< terms of each evaluated code size (default: the fit's --terms)
    std::vector<std::string> presets{"snapkv", "streaming_llm", "h2o"};
    bool ppl = true, needle = false;
    std::vector<double> needle_contexts{2048};
    std::vector<double> depths{0.1, 0.5, 0.9};
};

options parse(int argc, char** argv) {
    options o;
    o.model_path = model_path_from_environment();
    const std::map<std::string, std::string*> texts{{"--model", &o.model_path}, {"--essays", &o.essays_dir}, {"--dictionary", &o.dictionary},
                                                  {"--load-dictionary", &o.load_dictionary}, {"--csv", &o.csv}};
    const std::map<std::string, int*> counts{{"--prompts", &o.prompts},       {"--tokens", &o.tokens},         {"--offset", &o.offset},
                                             {"--stride", &o.stride},         {"--atoms", &o.atoms},           {"--terms", &o.terms},
                                             {"--iterations", &o.iterations}, {"--ppl-context", &o.ppl_context}, {"--continuation", &o.continuation}};
    parse_option_pairs("csr_quality", argc, argv, [&](const std::string& a, const std::string& v) {
        if (const auto t = texts.find(a); t != texts.end()) *t->second = v;
        else if (const auto c = counts.find(a); c != counts.end()) *c->second = std::stoi(v);
        else if (a == "--presets") o.presets = split_list(v);
        else if (a == "--code-terms") o.code_terms = split_numbers(v);
        else if (a == "--needle-contexts") o.needle_contexts = split_numbers(v);
        else if (a == "--depths") o.depths = split_numbers(v);
        else if (a == "--tasks") {
            const auto t = split_list(v);
            o.ppl = std::find(t.begin(), t.end(), "ppl") != t.end();
            o.needle = std::find(t.begin(), t.end(), "needle") != t.end();
        } else return false;
        return true;
    });
    if (o.model_path.empty() || o.essays_dir.empty()) usage_error("csr_quality", "--essays and --model (or KVCOMPACT_SMOLLM2_GGUF) are required");
    if (o.code_terms.empty()) o.code_terms.push_back(o.terms);
    if (o.prompts < 1 || o.tokens < 2 || o.stride < 1 || o.atoms < 1 || o.terms < 1 || o.continuation < 1 ||
        std::any_of(o.code_terms.begin(), o.code_terms.end(), [](double t) { return t < 1; }))
        usage_error("csr_quality", "counts must be positive");
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

/// @return the share of an fp16 cache of @p tokens tokens (2 bytes per key and value element) that
/// @p codes occupies as stored.
double fp16_share(const sparse_backend& codes, const model_config& c, std::int32_t tokens) {
    const double fp16_bytes = static_cast<double>(tokens) * c.n_layers * c.n_kv_heads * c.head_dim * 2.0 * sizeof(kvcompact::half_t);
    return static_cast<double>(codes.occupied_bytes()) / fp16_bytes;
}

/// @return CSR's "budget" in the sweep's CSV: the share of an fp16 cache that @p codes' code size takes per entry.
double code_budget(const sparse_backend& codes) { return codes.codes().stored_bits_per_element() / 16.0; }

/// Continuation perplexity (kv_quality's protocol and CSV rows) of the full cache, of CSR at every
/// o.code_terms, and of the eviction presets o.presets at the bytes of each code size (printed only).
void run_ppl(const options& o, const loaded_model& loaded, const kvcompact::codecs::dictionary_set& set, const std::string& model,
             const std::vector<token_id>& text, std::FILE* csv) {
    const auto& c = loaded.config;
    const auto& w = loaded.weights;
    const int L = c.n_layers, H = c.n_kv_heads, D = c.head_dim;
    if (static_cast<std::size_t>(o.ppl_context + o.continuation) > text.size()) throw std::runtime_error("essays too short");
    const std::vector<token_id> prompt(text.begin(), text.begin() + o.ppl_context);
    const std::vector<token_id> cont(text.begin() + o.ppl_context, text.begin() + o.ppl_context + o.continuation);
    const int capacity = o.ppl_context + o.continuation, window = 32;
    full_kv_backend prefilled(L, c.n_heads, H, D, capacity);
    engine first(c, w, prefilled);
    const auto prompt_logits = first.forward(prompt, o.ppl_context);
    struct result {
        double ppl;
        std::vector<double> errors;  ///< mean attention-output relative error per layer
        std::int32_t tokens_seen;
    };
    const auto evaluate = [&](kv_backend& backend) {
        error_probe probe(backend, c, prefilled.cache());
        engine eng(c, w, probe, static_cast<std::int32_t>(prompt.size()));
        const auto all = eng.forward_all(cont);
        const auto vocab = static_cast<std::size_t>(c.vocab);
        double total = nll(prompt_logits, cont[0]);
        for (std::size_t i = 1; i < cont.size(); ++i)
            total += nll(std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>((i - 1) * vocab), all.begin() + static_cast<std::ptrdiff_t>(i * vocab)),
                         cont[i]);
        return result{std::exp(total / static_cast<double>(cont.size())), probe.mean_errors(), eng.tokens_seen()};
    };
    const auto mean = [](const std::vector<double>& xs) { return std::accumulate(xs.begin(), xs.end(), 0.0) / static_cast<double>(xs.size()); };
    const auto csv_row = [&](const std::string& name, double budget, const result& r, double kept) {
        if (!csv) return;
        std::fprintf(csv, "ppl,%s,%.4f,%.5f,%.5f", name.c_str(), budget, r.ppl, kept);
        for (double e : r.errors) std::fprintf(csv, ",%.6f", e);
        std::fprintf(csv, "\n");
    };
    full_kv_backend full(L, c.n_heads, H, D, capacity);
    full.restore(prefilled.cache());
    const auto reference = evaluate(full);
    csv_row("full", 1.0, reference, 1.0);
    std::printf("\nContinuation perplexity (%d-token essay prefix, next %d tokens teacher-forced):\n\n", o.ppl_context, o.continuation);
    std::printf("| cache | bits per K/V element | share of an fp16 cache | ppl | ppl / full | mean attn rel. err |\n|---|---|---|---|---|---|\n");
    std::printf("| full | 16 (fp16) | 100%% | %.3f | 1.000 | 0 |\n", reference.ppl);
    for (double terms : o.code_terms) {
        const auto t0 = clock_type::now();
        sparse_backend sparse(set, static_cast<int>(terms), model, L, c.n_heads, H, D, capacity);
        sparse.restore(prefilled.cache());
        const auto r = evaluate(sparse);
        const double bits = sparse.codes().stored_bits_per_element(), packed = sparse.codes().packed_bits_per_element();
        csv_row("csr", code_budget(sparse), r, fp16_share(sparse, c, r.tokens_seen));
        std::printf("| csr (N = %d, s = %d; %.1f s) | %.2f stored (16-bit index + fp16 weight), %.2f packed | %.1f%% | %.3f | %.3f | %.4f |\n",
                    static_cast<int>(set.atoms), static_cast<int>(terms), seconds_since(t0), bits, packed, 100.0 * fp16_share(sparse, c, r.tokens_seen),
                    r.ppl, r.ppl / reference.ppl, mean(r.errors));
        const long budget = std::max(1L, std::lround(static_cast<double>(o.ppl_context) * code_budget(sparse)));
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
            for (int r2 = 0; r2 < rows; ++r2) last.positions.push_back(all_rows.positions[static_cast<std::size_t>(all_rows.rows - rows + r2)]);
            backend->finish_prefill(last);
            const auto evicted = evaluate(*backend);
            std::printf("| %s, %ld of %d prompt slots (same bytes as csr s = %d at fp16) | 16 | %.1f%% | %.3f | %.3f | %.4f |\n", name.c_str(), budget,
                        o.ppl_context, static_cast<int>(terms), 100.0 * static_cast<double>(budget) / o.ppl_context, evicted.ppl,
                        evicted.ppl / reference.ppl, mean(evicted.errors));
        }
        std::fflush(stdout);
    }
}

/// Cued pass-key retrieval (kv_quality's prompts, keys and CSV rows): per context and depth, a
/// full-cache prefill, then the greedy answer with the full cache and with the prompt coded at every o.code_terms.
void run_needle(const options& o, const loaded_model& loaded, const kvcompact::codecs::dictionary_set& set, const std::string& model,
                const std::vector<token_id>& text, std::FILE* csv) {
    const auto& c = loaded.config;
    const auto& w = loaded.weights;
    const int L = c.n_layers, H = c.n_kv_heads, D = c.head_dim;
    std::printf("\nCued pass-key retrieval (5-digit key, first digit given):\n\n| context | depth | cache | answer | hit |\n|---|---|---|---|---|\n");
    for (double context_tokens : o.needle_contexts) {
        const int context = static_cast<int>(context_tokens);
        for (double depth : o.depths) {
            const std::string key = pass_key(context, depth);
            const auto prompt = needle_prompt(loaded.tok, text, context, depth, key);
            const int capacity = static_cast<int>(prompt.size()) + pass_key_answer_tokens;
            full_kv_backend prefilled(L, c.n_heads, H, D, capacity);
            engine first(c, w, prefilled);
            const auto prompt_logits = first.forward(prompt);
            const auto answer_of = [&](kv_backend& backend) {
                engine eng(c, w, backend, static_cast<std::int32_t>(prompt.size()));
                std::string answer = pass_key_answer(eng, loaded.tok, prompt_logits);
                return std::pair{answer, eng.tokens_seen()};
            };
            const auto report = [&](const std::string& name, double budget, const std::string& answer, double kept) {
                const bool hit = pass_key_hit(answer, key);
                std::string shown;  // the answer on one table line
                for (char ch : answer) shown += ch == '\n' ? std::string("\\n") : std::string(1, ch);
                std::printf("| %d | %.0f%% | %s %.1f%% | \"%s\" | %s |\n", context, 100 * depth, name.c_str(), 100 * budget, shown.c_str(), hit ? "hit" : "miss");
                std::fflush(stdout);
                if (csv) std::fprintf(csv, "needle,%s,%.4f,%d,%.2f,%d,%.5f\n", name.c_str(), budget, context, depth, hit ? 1 : 0, kept);
            };
            full_kv_backend full(L, c.n_heads, H, D, capacity);
            full.restore(prefilled.cache());
            report("full", 1.0, answer_of(full).first, 1.0);
            for (double terms : o.code_terms) {
                sparse_backend sparse(set, static_cast<int>(terms), model, L, c.n_heads, H, D, capacity);
                sparse.restore(prefilled.cache());
                const auto [answer, seen] = answer_of(sparse);
                report("csr", code_budget(sparse), answer, fp16_share(sparse, c, seen));
            }
        }
    }
}

}  // namespace

int main(int argc, char** argv) try {
    const options o = parse(argc, argv);
    const loaded_model loaded(o.model_path);
    const auto& signature = loaded.signature;
    const std::string model = signature.name + " " + signature.fingerprint;
    const auto text = loaded.essay_tokens(o.essays_dir);
    if (static_cast<std::size_t>(o.offset) + static_cast<std::size_t>(o.prompts) * o.tokens > text.size()) throw std::runtime_error("essays too short");

    // 1. calibration samples and the dictionary fit (or a fitted set from --load-dictionary)
    std::printf("# CSR on %s\n\n", model.c_str());
    const auto set = o.load_dictionary.empty() ? fit_dictionaries(o, loaded, text, model) : kvcompact::codecs::dictionary_set::load(o.load_dictionary);
    if (!o.load_dictionary.empty()) std::printf("Dictionaries: %s (N = %d atoms)\n", o.load_dictionary.c_str(), static_cast<int>(set.atoms));

    // 2. evaluation
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> csv(o.csv.empty() ? nullptr : std::fopen(o.csv.c_str(), "w"), &std::fclose);
    if (!o.csv.empty() && !csv) throw std::runtime_error("cannot write --csv " + o.csv);
    if (csv) std::setvbuf(csv.get(), nullptr, _IOLBF, 0);  // rows survive an interrupted run
    if (o.ppl) run_ppl(o, loaded, set, model, text, csv.get());
    if (o.needle) run_needle(o, loaded, set, model, text, csv.get());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "csr_quality: %s\n", e.what());
    return 1;
}
