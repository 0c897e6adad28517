#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The peer's path for the work bench/kernel_bench.cu times, on the same GPU in the same run.

One Llama-3.1-8B attention layer (32 query heads, 8 KV heads, head_dim 128, bf16), N = 8k, 32k, 128k,
batch 1 and 8:
  * decode attention: torch SDPA (no weights), FlashInfer's batch decode (where flashinfer imports;
    the contiguous cache as one page per sequence) and eager attention that also updates H2O's
    accumulated attention (what decode-time scorers need from a PyTorch engine);
  * compression of the layer to 25%: kvpress presses (SnapKV window 64, TOVA, StreamingLLM, KNorm)
    where kvpress and transformers import; otherwise the same methods written in plain PyTorch
    (observation-window attention, max-pooling, top-k, gather), marked "torch".
Medians of CUDA-event timings after warm-up. Columns as kernel_bench: bytes moved / time as a share
of the measured device copy bandwidth, and time over the bytes floor.

    python3 bench/peer_torch.py [--quick] [--reps N] [--csv FILE]
"""
import argparse
import csv
import math
import statistics
import sys

import torch

QUERY_HEADS, KV_HEADS, HEAD_DIM, WINDOW = 32, 8, 128, 64
GROUP = QUERY_HEADS // KV_HEADS


def median_ms(work, reps, warm=3, before=None):
    for _ in range(warm):
        if before:
            before()
        work()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if before:
            before()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def torch_snapkv(keys, values, queries, kept, kernel=7):
    """SnapKV in plain PyTorch: window attention summed over rows, max-pooled, top-k, gather."""
    batch, heads, n, dim = keys.shape
    window = queries.shape[2]
    q = queries.view(batch, KV_HEADS, GROUP * window, dim)
    logits = torch.matmul(q, keys.transpose(-1, -2)) / math.sqrt(dim)
    causal = torch.arange(n, device=keys.device)[None, :] > (n - window + torch.arange(window, device=keys.device))[:, None]
    logits = logits.view(batch, KV_HEADS, GROUP, window, n).masked_fill(causal, float("-inf"))
    scores = torch.softmax(logits.float(), dim=-1).sum(dim=3).mean(dim=2)[..., : n - window]
    scores = torch.nn.functional.max_pool1d(scores, kernel, stride=1, padding=kernel // 2)
    index = scores.topk(kept - window, dim=-1).indices.sort(dim=-1).values
    index = torch.cat([index, torch.arange(n - window, n, device=keys.device).expand(batch, KV_HEADS, window)], dim=-1)
    gather = index[..., None].expand(-1, -1, -1, dim)
    return keys.gather(2, gather), values.gather(2, gather)


def torch_by_score(keys, values, scores, kept):
    index = scores.topk(kept, dim=-1).indices.sort(dim=-1).values[..., None].expand(-1, -1, -1, keys.shape[-1])
    return keys.gather(2, index), values.gather(2, index)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--csv")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("peer_torch.py: no CUDA device; nothing measured.")
        return 77
    torch.manual_seed(0)
    dev = "cuda"
    rows = []

    source = torch.empty(1 << 30, dtype=torch.uint8, device=dev).random_(0, 255)
    target = torch.empty_like(source)
    bandwidth = 2 * source.numel() / (median_ms(lambda: target.copy_(source), args.reps) * 1e-3)
    del source, target
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; copy bandwidth (read + write) {bandwidth / 1e12:.2f} TB/s")

    presses = None
    try:
        import kvpress  # noqa: F401
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

        config = LlamaConfig(hidden_size=QUERY_HEADS * HEAD_DIM, num_attention_heads=QUERY_HEADS, num_key_value_heads=KV_HEADS,
                             head_dim=HEAD_DIM, num_hidden_layers=1, max_position_embeddings=1 << 18)
        attention = LlamaAttention(config, layer_idx=0).to(dev, torch.bfloat16)
        rotary = LlamaRotaryEmbedding(config).to(dev)
        presses = {
            "SnapKV (window 64)": kvpress.SnapKVPress(compression_ratio=0.75, window_size=WINDOW),
            "TOVA": kvpress.TOVAPress(compression_ratio=0.75),
            "StreamingLLM": kvpress.StreamingLLMPress(compression_ratio=0.75),
            "KNorm": kvpress.KnormPress(compression_ratio=0.75),
        }
        print("peer: kvpress", getattr(kvpress, "__version__", "(version unknown)"))
    except Exception as error:  # noqa: BLE001 - any import problem means: fall back to plain PyTorch
        print(f"peer: kvpress unavailable ({type(error).__name__}: {str(error)[:100]}); plain PyTorch versions instead")

    flashinfer, workspace = None, None
    try:
        import flashinfer

        workspace = torch.empty(128 << 20, dtype=torch.uint8, device=dev)
        print("peer: flashinfer", getattr(flashinfer, "__version__", "(version unknown)"))
    except Exception as error:  # noqa: BLE001 - FlashInfer is optional
        flashinfer = None
        print(f"peer: flashinfer unavailable ({type(error).__name__}: {str(error)[:100]})")

    def emit(kernel, tokens, batch, ms, nbytes):
        us = ms * 1e3
        floor_us = nbytes / bandwidth * 1e6
        row = (kernel, tokens, batch, us, nbytes / (us * 1e-6) / 1e9, 100 * nbytes / (us * 1e-6) / bandwidth, us / floor_us)
        rows.append(row)
        print("| {:<40} | {:6d} | {:2d} | {:10.1f} | {:8.0f} | {:6.1f}% | {:6.2f}x |".format(*row), flush=True)

    print("| kernel | N | B | median us | GB/s | % copy | x floor |\n|---|---|---|---|---|---|---|")
    for n in ([8192] if args.quick else [8192, 32768, 131072]):
        for batch in (1, 8):
            keys = torch.rand(batch, KV_HEADS, n, HEAD_DIM, device=dev, dtype=torch.bfloat16) * 2 - 1
            values = torch.rand_like(keys) * 2 - 1
            kv_bytes = 2 * keys.numel() * keys.element_size()
            q = torch.rand(batch, QUERY_HEADS, 1, HEAD_DIM, device=dev, dtype=torch.bfloat16) * 2 - 1
            accumulated = torch.zeros(batch, KV_HEADS, n, device=dev, dtype=torch.float32)

            def sdpa():
                return torch.nn.functional.scaled_dot_product_attention(q, keys, values, enable_gqa=True)

            def eager_h2o():
                logits = torch.matmul(q.view(batch, KV_HEADS, GROUP, HEAD_DIM), keys.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
                probabilities = torch.softmax(logits.float(), dim=-1)
                accumulated.add_(probabilities.mean(dim=2))
                return torch.matmul(probabilities.to(values.dtype), values)

            emit("torch SDPA decode attention", n, batch, median_ms(sdpa, args.reps), kv_bytes)
            if flashinfer is not None:
                try:  # [B][Hkv][N][D] is the HND paged layout with one page of N slots per sequence
                    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "HND")
                    ints = dict(dtype=torch.int32, device=dev)
                    wrapper.plan(torch.arange(batch + 1, **ints), torch.arange(batch, **ints), torch.full((batch,), n, **ints), QUERY_HEADS,
                                 KV_HEADS, HEAD_DIM, n, data_type=torch.bfloat16, q_data_type=torch.bfloat16)
                    q_heads = q.view(batch, QUERY_HEADS, HEAD_DIM)
                    emit("FlashInfer batch decode attention", n, batch, median_ms(lambda: wrapper.run(q_heads, (keys, values)), args.reps), kv_bytes)
                except Exception as error:  # noqa: BLE001 - report and go on
                    print(f"| FlashInfer batch decode attention | {n} | {batch} | failed: {type(error).__name__}: {str(error)[:80]} |")
            emit("torch eager decode attention + H2O", n, batch, median_ms(eager_h2o, args.reps), kv_bytes)

            floor = kv_bytes / 2 + 2 * 0.25 * kv_bytes
            kept = n // 4
            window = torch.rand(batch, QUERY_HEADS, WINDOW, HEAD_DIM, device=dev, dtype=torch.bfloat16) * 2 - 1
            with torch.no_grad():
                if presses is not None and batch == 1:
                    hidden = torch.rand(batch, n, QUERY_HEADS * HEAD_DIM, device=dev, dtype=torch.bfloat16) * 2 - 1
                    cos, sin = rotary(hidden, torch.arange(n, device=dev)[None])
                    extra = {"position_embeddings": (cos, sin)}
                    for name, press in presses.items():
                        try:
                            ms = median_ms(lambda: press.compress(attention, hidden, keys, values, None, extra), args.reps)
                            emit(f"kvpress {name} to 25%", n, batch, ms, floor)
                        except Exception as error:  # noqa: BLE001 - report and go on
                            print(f"| kvpress {name} | {n} | {batch} | failed: {type(error).__name__}: {str(error)[:80]} |")
                    del hidden
                else:
                    emit("torch SnapKV (window 64) to 25%", n, batch, median_ms(lambda: torch_snapkv(keys, values, window, kept), args.reps), floor)
                    last = window[:, :, -1:, :].reshape(batch, KV_HEADS, GROUP, HEAD_DIM)
                    tova = lambda: torch_by_score(keys, values, torch.softmax(  # noqa: E731
                        (torch.matmul(last, keys.transpose(-1, -2)) / math.sqrt(HEAD_DIM)).float(), -1).mean(dim=2), kept)
                    emit("torch TOVA to 25%", n, batch, median_ms(tova, args.reps), floor)
                    recency = torch.arange(n, device=dev, dtype=torch.float32).expand(batch, KV_HEADS, n).clone()
                    recency[..., :4] = float(n)
                    emit("torch StreamingLLM to 25%", n, batch, median_ms(lambda: torch_by_score(keys, values, recency, kept), args.reps), floor)
                    emit("torch KNorm to 25%", n, batch,
                         median_ms(lambda: torch_by_score(keys, values, -keys.float().norm(dim=-1), kept), args.reps), floor)
            del keys, values, accumulated, window
            torch.cuda.empty_cache()

    if args.csv:
        with open(args.csv, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["kernel", "tokens", "batch", "median_us", "gb_per_s", "percent_copy", "x_floor"])
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
