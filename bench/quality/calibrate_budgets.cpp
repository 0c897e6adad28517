// SPDX-License-Identifier: Apache-2.0
/// @file calibrate_budgets.cpp
/// @brief Offline per-layer budgets for SmolLM2-135M-Instruct: PrefixKV's prefix search and XKV's
///        sensitivity profile + knapsack (docs/methods.md 7 and 8), written as budget files
///        (kvcompact::budgets::layer_budget_file) that kv_quality and smollm2_decode load.
///
/// For each calibration prompt (N essay passages of T + C tokens, taken from token --offset on, after
/// the text the quality sweep evaluates on) the engine prefills T + C tokens with the full cache
/// through a recording backend, which keeps
///  - PrefixKV's importance: per layer, the attention of every prompt row (positions < T) averaged over
///    the 9 query heads and summed per key (head-averaged column sums, accumulated in double);
///  - the queries of the last w prompt rows (SnapKV's observation window) and of the C continuation
///    rows (teacher-forced), and the K/V of all T + C tokens.
/// PrefixKV: per prompt and target the prefix search (1 sink + the last token protected) gives the
/// evicted fraction of every layer; a table is the mean over prompts (its spread the standard deviation).
/// XKV: each layer is compressed alone by the SnapKV preset (w, kernel 7, max pool; kvcompact's own
/// cpu::session) to kept fractions 0.05, 0.10, ..., 1.00 of the prompt; the loss of (layer, fraction)
/// is ||o - o_full||^2 / ||o_full||^2 of that layer's attention output for the continuation rows
/// (kept prompt slots plus every continuation token, as the preset leaves them), averaged over query
/// heads, rows and prompts, made non-increasing in the fraction; the knapsack then picks one fraction
/// per layer minimising the summed loss at the target average.
///
/// Usage: calibrate_budgets --essays DIR [--model FILE] [--prompts 16] [--tokens 1024]
///                          [--continuation 64] [--window 32] [--offset 16384]
///                          [--budgets 0.1,0.2,0.3,0.35,0.5] [--prefixkv FILE] [--xkv FILE]
///                          [--profile-csv FILE] [--threads N]
/// The profile CSV has rows `xkv,layer,fraction,loss` (the monotone loss) and
/// `prefixkv,layer,kept_fraction,mean,std` for every target.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <kvcompact/calibration/knapsack.hpp>
#include <kvcompact/calibration/prefix_search.hpp>
#include <kvcompact/kvcompact.hpp>
#include <kvcompact/selectors/layer_budget_file.hpp>

#include "engine.hpp"
#include "kv_backend.hpp"
#include "loaded_model.hpp"
#include "model.hpp"
#include "options.hpp"

namespace {

using namespace smollm2;
using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

/// XKV's grid of kept fractions: 0.05, 0.10, ..., 1.00 (one budget unit each step).
constexpr int grid_points = 20;
double grid_fraction(int k) { return 0.05 * (k + 1); }

/// Command-line options.
struct options {
    std::string model_path, essays_dir, prefixkv_out, xkv_out, profile_csv;
    int prompts = 16, tokens = 1024, continuation = 64, window = 32, offset = 16384, threads = 0;
    std::vector<double> budgets{0.1, 0.2, 0.3, 0.35, 0.5};
};

/// Exits with a usage_error of this tool.
[[noreturn]] void usage(const std::string& why) { usage_error("calibrate_budgets", why); }

options parse(int argc, char** argv) {
    options o;
    o.model_path = model_path_from_environment();
    parse_option_pairs("calibrate_budgets", argc, argv, [&](const std::string& a, const std::string& v) {
        if (a == "--model") o.model_path = v;
        else if (a == "--essays") o.essays_dir = v;
        else if (a == "--prompts") o.prompts = std::stoi(v);
        else if (a == "--tokens") o.tokens = std::stoi(v);
        else if (a == "--continuation") o.continuation = std::stoi(v);
        else if (a == "--window") o.window = std::stoi(v);
        else if (a == "--offset") o.offset = std::stoi(v);
        else if (a == "--prefixkv") o.prefixkv_out = v;
        else if (a == "--xkv") o.xkv_out = v;
        else if (a == "--profile-csv") o.profile_csv = v;
        else if (a == "--threads") o.threads = std::stoi(v);
        else if (a == "--budgets") {
            o.budgets.clear();
            for (const auto& item : split_list(v)) o.budgets.push_back(std::stod(item));
        } else return false;
        return true;
    });
    if (o.model_path.empty() || o.essays_dir.empty()) usage("need --essays DIR and a model (--model or KVCOMPACT_SMOLLM2_GGUF)");
    if (o.prefixkv_out.empty() && o.xkv_out.empty()) usage("nothing to write: give --prefixkv FILE and/or --xkv FILE");
    if (o.prompts < 1 || o.tokens < 2 * o.window || o.continuation < 1 || o.window < 1) usage("need prompts >= 1, tokens >= 2 window, continuation >= 1");
    for (double b : o.budgets)
        if (!(b > 0.05 && b < 1.0)) usage("budgets must be in (0.05, 1)");
    return o;
}

/// Full-cache backend that also records what the calibrations need (see the file comment).
class recording_backend final : public kv_backend {
public:
    recording_backend(const model_config& c, int prompt, int window, int continuation)
        : full_(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, prompt + continuation), c_(c), prompt_(prompt),
          first_row_(prompt - window), rows_(window + continuation),
          colsum_(static_cast<std::size_t>(c.n_layers) * prompt, 0.0),
          queries_(static_cast<std::size_t>(c.n_layers) * c.n_heads * rows_ * c.head_dim),
          probabilities_(static_cast<std::size_t>(c.n_heads) * prompt) {}

    void append(int layer, const float* k, const float* v, std::int32_t position) override { full_.append(layer, k, v, position); }

    void attend(int layer, const float* q, std::int32_t position, float* out) override {
        full_.attend(layer, q, position, out);
        const int D = c_.head_dim, H = c_.n_heads, group = c_.n_heads / c_.n_kv_heads;
        if (position >= first_row_ && position < first_row_ + rows_)
            for (int g = 0; g < H; ++g)
                std::copy_n(q + g * D, D, &queries_[((static_cast<std::size_t>(layer) * H + g) * rows_ + (position - first_row_)) * D]);
        if (position >= prompt_) return;
        const int keys = position + 1;  // the full cache holds positions 0..position in slots 0..position
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));
#pragma omp parallel for schedule(static)
        for (int g = 0; g < H; ++g) {
            float* p = &probabilities_[static_cast<std::size_t>(g) * prompt_];
            for (int j = 0; j < keys; ++j) p[j] = ops::dot(q + g * D, full_.cache().key(layer, g / group, j), static_cast<std::size_t>(D)) * scale;
            ops::softmax(p, static_cast<std::size_t>(keys));
        }
        double* row = &colsum_[static_cast<std::size_t>(layer) * prompt_];
        for (int g = 0; g < H; ++g)
            for (int j = 0; j < keys; ++j) row[j] += probabilities_[static_cast<std::size_t>(g) * prompt_ + j] / H;
    }
    void finish_prefill(const query_window&) override {}
    void restore(const kv_cache_storage& prefilled) override { full_.restore(prefilled); }
    const kv_cache_storage& cache() const override { return full_.cache(); }

    /// @return the recorded query of (layer, query head, row), rows counted from position T - w.
    const float* query(int layer, int g, int row) const {
        return &queries_[((static_cast<std::size_t>(layer) * c_.n_heads + g) * rows_ + row) * c_.head_dim];
    }
    /// @return PrefixKV's importance of every prompt key of @p layer (head-averaged column sums).
    std::vector<double> importance(int layer) const {
        const auto first = colsum_.begin() + static_cast<std::ptrdiff_t>(layer) * prompt_;
        return {first, first + prompt_};
    }

private:
    full_kv_backend full_;
    const model_config& c_;
    int prompt_, first_row_, rows_;
    std::vector<double> colsum_;        // [layer][key], prompt rows only, head-averaged
    std::vector<float> queries_;        // [layer][query head][row][dim], positions T - w .. T + C - 1
    std::vector<float> probabilities_;  // [query head][key] scratch
};

/// The SnapKV selection of every layer at every grid fraction, as the index of the first fraction
/// whose keep-set holds each prompt slot: first[(layer * kv_heads + head) * T + position].
std::vector<int> first_kept_fraction(const options& o, const model_config& c, const recording_backend& rec) {
    const int T = o.tokens, L = c.n_layers, H = c.n_kv_heads, D = c.head_dim;
    std::vector<int> first(static_cast<std::size_t>(L) * H * T, grid_points);
    // SnapKV's window in kvcompact's query_window layout: [layer][query head][row][dim] (the recorded rows 0..w-1)
    std::vector<float> window(static_cast<std::size_t>(L) * c.n_heads * o.window * D);
    for (int l = 0; l < L; ++l)
        for (int g = 0; g < c.n_heads; ++g)
            for (int r = 0; r < o.window; ++r)
                std::copy_n(rec.query(l, g, r), D, &window[((static_cast<std::size_t>(l) * c.n_heads + g) * o.window + r) * D]);
    std::vector<std::int32_t> rows(static_cast<std::size_t>(o.window));
    for (int r = 0; r < o.window; ++r) rows[static_cast<std::size_t>(r)] = T - o.window + r;
    kv_cache_storage prompt(L, H, T, D);
    for (int k = 0; k < grid_points; ++k) {
        for (int l = 0; l < L; ++l)
            for (int h = 0; h < H; ++h) {
                std::copy_n(rec.cache().key(l, h, 0), static_cast<std::size_t>(T) * D, prompt.key(l, h, 0));
                std::copy_n(rec.cache().value(l, h, 0), static_cast<std::size_t>(T) * D, prompt.value(l, h, 0));
                for (int j = 0; j < T; ++j) prompt.positions[prompt.slot_index(l, h, j)] = j;
                prompt.lengths[prompt.head_index(l, h)] = T;
            }
        const auto policy = kvcompact::policies::snapkv(std::lround(grid_fraction(k) * T), o.window, 7);
        using session_t = kvcompact::cpu::session<decltype(policy), float, kvcompact::layouts::strided>;
        const kvcompact::kv_cache<float, kvcompact::layouts::strided> view{kvcompact::layouts::bhsd(1, L, H, T, D), prompt.k.data(), prompt.v.data(),
                                                                           prompt.lengths.data(), prompt.positions.data()};
        const kvcompact::attention_shape shape{c.n_heads};
        std::vector<std::byte> state(session_t::state_bytes(view.layout)), workspace(session_t::workspace_bytes(view.layout, shape));
        session_t session(policy, view, shape, state, workspace);
        session.compress_prefill({window.data(), rows.data(), o.window});
        for (int l = 0; l < L; ++l)
            for (int h = 0; h < H; ++h) {
                std::set<int> kept;
                for (int j = 0; j < prompt.lengths[prompt.head_index(l, h)]; ++j) kept.insert(prompt.positions[prompt.slot_index(l, h, j)]);
                for (int p = 0; p < T; ++p) {
                    int& f = first[(static_cast<std::size_t>(l) * H + h) * T + p];
                    if (f < k && !kept.count(p))
                        throw std::runtime_error("SnapKV's keep-sets are not nested across fractions (layer " + std::to_string(l) + ")");
                    if (kept.count(p) && f > k) f = k;
                }
            }
    }
    return first;
}

/// Adds one prompt's XKV losses to @p loss[layer][fraction] (sums; divided by @p count later).
void add_xkv_losses(const options& o, const model_config& c, const recording_backend& rec, const std::vector<int>& first,
                    std::vector<std::vector<double>>& loss, long& count) {
    const int T = o.tokens, C = o.continuation, D = c.head_dim, group = c.n_heads / c.n_kv_heads;
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    std::vector<std::vector<double>> local(static_cast<std::size_t>(c.n_layers), std::vector<double>(grid_points, 0.0));
#pragma omp parallel for schedule(dynamic)
    for (int l = 0; l < c.n_layers; ++l) {
        std::vector<double> weight(static_cast<std::size_t>(T + C)), bucket_w(grid_points), bucket_v(static_cast<std::size_t>(grid_points) * D);
        std::vector<double> full(static_cast<std::size_t>(D)), num(static_cast<std::size_t>(D));
        for (int g = 0; g < c.n_heads; ++g) {
            const int h = g / group;
            for (int row = 0; row < C; ++row) {
                const float* q = rec.query(l, g, o.window + row);
                const int keys = T + row + 1;
                double top = -INFINITY;
                for (int j = 0; j < keys; ++j) {
                    double dot = 0;
                    for (int d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * rec.cache().key(l, h, j)[d];
                    weight[static_cast<std::size_t>(j)] = dot * scale;
                    top = std::max(top, weight[static_cast<std::size_t>(j)]);
                }
                std::fill(bucket_w.begin(), bucket_w.end(), 0.0);
                std::fill(bucket_v.begin(), bucket_v.end(), 0.0);
                double always_w = 0;
                std::fill(num.begin(), num.end(), 0.0);  // continuation tokens: kept at every fraction
                for (int j = 0; j < keys; ++j) {
                    const double w = std::exp(weight[static_cast<std::size_t>(j)] - top);
                    const float* v = rec.cache().value(l, h, j);
                    if (j >= T) {
                        always_w += w;
                        for (int d = 0; d < D; ++d) num[static_cast<std::size_t>(d)] += w * v[d];
                        continue;
                    }
                    const int k = first[(static_cast<std::size_t>(l) * c.n_kv_heads + h) * T + j];
                    bucket_w[static_cast<std::size_t>(k)] += w;
                    for (int d = 0; d < D; ++d) bucket_v[static_cast<std::size_t>(k) * D + d] += w * v[d];
                }
                double total_w = always_w;
                for (double w : bucket_w) total_w += w;
                for (int d = 0; d < D; ++d) {
                    double v = num[static_cast<std::size_t>(d)];
                    for (int k = 0; k < grid_points; ++k) v += bucket_v[static_cast<std::size_t>(k) * D + d];
                    full[static_cast<std::size_t>(d)] = v / total_w;
                }
                double den = 0;
                for (double x : full) den += x * x;
                double kept_w = always_w;
                for (int k = 0; k < grid_points; ++k) {
                    kept_w += bucket_w[static_cast<std::size_t>(k)];
                    double err = 0;
                    for (int d = 0; d < D; ++d) {
                        num[static_cast<std::size_t>(d)] += bucket_v[static_cast<std::size_t>(k) * D + d];
                        const double diff = num[static_cast<std::size_t>(d)] / kept_w - full[static_cast<std::size_t>(d)];
                        err += diff * diff;
                    }
                    local[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)] += err / std::max(den, 1e-30);
                }
            }
        }
    }
    for (int l = 0; l < c.n_layers; ++l)
        for (int k = 0; k < grid_points; ++k) loss[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)] += local[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)];
    count += static_cast<long>(c.n_heads) * C;
}

std::string today() {
    char buf[16];
    const std::time_t now = std::time(nullptr);
    std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&now));
    return buf;
}

void write_file(const std::string& path, const kvcompact::budgets::layer_budget_file& f) {
    std::ofstream out(path);
    if (!out) throw std::runtime_error("cannot write " + path);
    kvcompact::budgets::write_layer_budgets(out, f);
    std::fprintf(stderr, "wrote %s (%zu tables)\n", path.c_str(), f.tables.size());
}

}  // namespace

int main(int argc, char** argv) try {
    const options o = parse(argc, argv);
#ifdef _OPENMP
    if (o.threads > 0) omp_set_num_threads(o.threads);
#endif
    const auto t_start = clock_type::now();
    const loaded_model model(o.model_path);
    const auto& c = model.config;
    const auto& w = model.weights;
    const auto& signature = model.signature;
    const auto text = model.essay_tokens(o.essays_dir);
    const int span = o.tokens + o.continuation;
    if (static_cast<std::size_t>(o.offset) + static_cast<std::size_t>(o.prompts) * span > text.size())
        throw std::runtime_error("essays too short: " + std::to_string(text.size()) + " tokens");
    std::fprintf(stderr, "%s (%s): %d prompts of %d + %d tokens from token %d of %zu\n", signature.name.c_str(), signature.fingerprint.c_str(), o.prompts,
                 o.tokens, o.continuation, o.offset, text.size());

    const int L = c.n_layers;
    std::vector<std::vector<std::vector<double>>> rho(o.budgets.size());  // [target][prompt][layer]
    std::vector<std::vector<double>> xkv_loss(static_cast<std::size_t>(L), std::vector<double>(grid_points, 0.0));
    long xkv_count = 0;
    for (int n = 0; n < o.prompts; ++n) {
        const auto t0 = clock_type::now();
        const auto begin = text.begin() + o.offset + static_cast<std::ptrdiff_t>(n) * span;
        const std::vector<token_id> tokens(begin, begin + span);
        recording_backend rec(c, o.tokens, o.window, o.continuation);
        engine eng(c, w, rec);
        (void)eng.forward(tokens);
        const double prefill_s = seconds_since(t0);
        std::vector<std::vector<double>> importance;
        for (int l = 0; l < L; ++l) importance.push_back(rec.importance(l));
        for (std::size_t b = 0; b < o.budgets.size(); ++b) {
            const double r = 1.0 - o.budgets[b];
            const auto found = kvcompact::calibration::prefix_search(importance, r, 2);
            double mean = 0;
            for (double x : found.evicted) mean += x / L;
            if (!found.converged || !kvcompact::calibration::meets_evicted_share(found.evicted, r, o.tokens))
                std::fprintf(stderr, "  prompt %d, kept %.2f: search %s after %d steps, mean evicted %.4f (target %.4f)\n", n, o.budgets[b],
                             found.converged ? "converged" : "did not converge", found.iterations, mean, r);
            rho[b].push_back(found.evicted);
        }
        const auto t1 = clock_type::now();
        if (!o.xkv_out.empty()) add_xkv_losses(o, c, rec, first_kept_fraction(o, c, rec), xkv_loss, xkv_count);
        std::fprintf(stderr, "prompt %d/%d: prefill + recording %.1f s, profiles %.1f s\n", n + 1, o.prompts, prefill_s, seconds_since(t1));
    }

    std::FILE* csv = o.profile_csv.empty() ? nullptr : std::fopen(o.profile_csv.c_str(), "w");
    if (!o.profile_csv.empty() && !csv) throw std::runtime_error("cannot write " + o.profile_csv);
    char line[256];
    std::snprintf(line, sizeof line, "%d essay prompts of %d tokens from token %d of bench/quality/fetch_essays.sh's essays (consecutive, %d tokens apart)",
                  o.prompts, o.tokens, o.offset, span);
    const std::string source = line;
    if (!o.prefixkv_out.empty()) {
        kvcompact::budgets::layer_budget_file f{"prefixkv", signature, {}, {}};
        f.notes = {"calibrated by bench/quality/calibrate_budgets on " + today(), source,
                   "importance: head-averaged attention column sums over every prompt row; 1 sink + the last token protected",
                   "keep = 1 - mean over prompts of the evicted fraction of PrefixKV's prefix search; spread = its standard deviation"};
        for (std::size_t b = 0; b < o.budgets.size(); ++b) {
            kvcompact::budgets::calibrated_table t{o.budgets[b], {}, {}};
            std::vector<double> evicted;
            double mean_keep = 0;
            for (int l = 0; l < L; ++l) {
                double m = 0, s = 0;
                for (const auto& prompt : rho[b]) m += prompt[static_cast<std::size_t>(l)] / o.prompts;
                for (const auto& prompt : rho[b]) s += (prompt[static_cast<std::size_t>(l)] - m) * (prompt[static_cast<std::size_t>(l)] - m) / o.prompts;
                t.keep.push_back(1.0 - m);
                evicted.push_back(m);
                t.spread.push_back(std::sqrt(s));
                mean_keep += (1.0 - m) / L;
                if (csv) std::fprintf(csv, "prefixkv,%d,%.2f,%.6f,%.6f\n", l, o.budgets[b], 1.0 - m, std::sqrt(s));
            }
            if (!kvcompact::calibration::meets_evicted_share(evicted, 1.0 - o.budgets[b], o.tokens))
                throw std::runtime_error("PrefixKV table for " + std::to_string(o.budgets[b]) + " averages " + std::to_string(mean_keep) +
                                         " (the prompts' searches did not meet the target)");
            f.tables.push_back(t);
        }
        write_file(o.prefixkv_out, f);
    }
    if (!o.xkv_out.empty()) {
        for (auto& row : xkv_loss)
            for (double& x : row) x /= static_cast<double>(xkv_count);
        kvcompact::calibration::make_non_increasing(xkv_loss);
        std::vector<int> cost;
        for (int k = 0; k < grid_points; ++k) cost.push_back(k + 1);
        if (csv)
            for (int l = 0; l < L; ++l)
                for (int k = 0; k < grid_points; ++k) std::fprintf(csv, "xkv,%d,%.2f,%.6g\n", l, grid_fraction(k), xkv_loss[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)]);
        kvcompact::budgets::layer_budget_file f{"xkv", signature, {}, {}};
        f.notes = {"calibrated by bench/quality/calibrate_budgets on " + today(), source,
                   "loss: relative squared error of each layer's attention output on " + std::to_string(o.continuation) +
                       " teacher-forced continuation rows when that layer alone is compressed by the snapkv preset (window " + std::to_string(o.window) +
                       ", kernel 7, max pool) to 0.05, 0.10, ..., 1.00 of the prompt",
                   "keep: exact knapsack over that grid minimising the summed loss at the table's average"};
        for (double b : o.budgets) {
            const auto pick = kvcompact::calibration::allocate_budget(xkv_loss, cost, static_cast<int>(std::lround(L * b / 0.05)));
            kvcompact::budgets::calibrated_table t{b, {}, {}};
            for (int k : pick.choice) t.keep.push_back(grid_fraction(k));
            f.tables.push_back(t);
            std::fprintf(stderr, "xkv %.2f: summed loss %.4f, %d units\n", b, pick.loss, pick.units);
        }
        write_file(o.xkv_out, f);
    }
    if (csv) std::fclose(csv);
    std::fprintf(stderr, "total %.1f s\n", seconds_since(t_start));
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "calibrate_budgets: error: %s\n", e.what());
    return 1;
}
