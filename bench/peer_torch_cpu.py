#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The peer's path for the work bench/cpu_bench.cpp times, on the CPU, in the same way.

One Llama-3.1-8B attention layer (32 query heads, 8 KV heads, head_dim 128, fp32, batch 1) at N = 4096
and 16384 tokens, with 1 and 2 torch threads:
  * compression of the layer to 25 %: kvpress presses (SnapKV window 32, StreamingLLM, KNorm, TOVA)
    when kvpress and transformers import, always also the same methods in plain PyTorch (window
    attention, max-pooling, top-k, gather), marked "torch";
  * one decode step: torch SDPA, and matmul attention that also updates H2O's accumulated attention.
Every repetition runs every case once, interleaved, after a last-level cache flush (a 512 MiB write);
medians over the repetitions (wall clock, and the process's CPU time). The bytes floor is measured in the same run (a 256 MiB tensor copy;
bandwidth = bytes read + written per second) with the floors of cpu_bench.cpp.

    python3 bench/peer_torch_cpu.py [--tokens 4096,16384] [--threads 1,2] [--reps 7] [--cases SnapKV,decode] [--csv FILE]
"""
import argparse
import csv
import math
import statistics
import sys
import time

import torch
from peer_torch import torch_by_score, torch_snapkv  # the plain-PyTorch methods of the GPU peer (window from the queries' shape)

QUERY_HEADS, KV_HEADS, HEAD_DIM, WINDOW = 32, 8, 128, 32
GROUP = QUERY_HEADS // KV_HEADS
JUNK = torch.empty(512 << 20, dtype=torch.uint8)


def flush():
    JUNK.add_(1)


def timed_ms(work):
    """Wall-clock ms of one call, and the process's CPU ms (all threads) during it."""
    flush()
    cpu, start = time.process_time(), time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="4096,16384")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--csv")
    parser.add_argument("--cases", help="only the cases whose name contains one of these comma-separated words")
    args = parser.parse_args()
    torch.manual_seed(0)
    token_counts = [int(x) for x in args.tokens.split(",")]
    thread_counts = [int(x) for x in args.threads.split(",")]

    source = torch.ones(256 << 20, dtype=torch.uint8)
    target = torch.empty_like(source)
    bandwidth = 2 * source.numel() / (statistics.median(timed_ms(lambda: target.copy_(source))[0] for _ in range(max(args.reps, 5))) * 1e-3)
    del source, target
    print(f"peer_torch_cpu: torch {torch.__version__}, copy bandwidth (read + write) {bandwidth / 1e9:.1f} GB/s")

    presses, attention, rotary = None, None, None
    try:
        import kvpress
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

        config = LlamaConfig(hidden_size=QUERY_HEADS * HEAD_DIM, num_attention_heads=QUERY_HEADS, num_key_value_heads=KV_HEADS,
                             head_dim=HEAD_DIM, num_hidden_layers=1, max_position_embeddings=1 << 15)
        attention = LlamaAttention(config, layer_idx=0).float()
        rotary = LlamaRotaryEmbedding(config)
        presses = {
            "SnapKV prefill, window 32": kvpress.SnapKVPress(compression_ratio=0.75, window_size=WINDOW),
            "StreamingLLM prefill": kvpress.StreamingLLMPress(compression_ratio=0.75),
            "KNorm prefill": kvpress.KnormPress(compression_ratio=0.75),
            "TOVA prefill": kvpress.TOVAPress(compression_ratio=0.75),
        }
        from importlib.metadata import version
        print("peer: kvpress", version("kvpress"))
    except Exception as error:  # noqa: BLE001 - any import problem means: plain PyTorch only
        print(f"peer: kvpress unavailable ({type(error).__name__}: {str(error)[:100]}); plain PyTorch versions only")

    cases = []  # (implementation, case, tokens, threads, floor bytes, work)
    for n in token_counts:
        keys = torch.rand(1, KV_HEADS, n, HEAD_DIM) * 2 - 1
        values = torch.rand_like(keys) * 2 - 1
        kv_bytes = 2 * keys.numel() * keys.element_size()
        prefill_floor, decode_floor = kv_bytes / 2 + 2 * 0.25 * kv_bytes, kv_bytes
        window = torch.rand(1, QUERY_HEADS, WINDOW, HEAD_DIM) * 2 - 1
        q = window[:, :, -1:, :].contiguous()
        last = q.view(1, KV_HEADS, GROUP, HEAD_DIM)
        kept = n // 4
        accumulated = torch.zeros(1, KV_HEADS, n)

        def eager_h2o(keys=keys, values=values, q=q, accumulated=accumulated):
            logits = torch.matmul(q.view(1, KV_HEADS, GROUP, HEAD_DIM), keys.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
            probabilities = torch.softmax(logits, dim=-1)
            accumulated.add_(probabilities.mean(dim=2))
            return torch.matmul(probabilities, values)

        recency = torch.arange(n, dtype=torch.float32).expand(1, KV_HEADS, n).clone()
        recency[..., :4] = float(n)
        plain = {
            "SnapKV prefill, window 32": lambda keys=keys, values=values, window=window, kept=kept: torch_snapkv(keys, values, window, kept),
            "StreamingLLM prefill": lambda keys=keys, values=values, recency=recency, kept=kept: torch_by_score(keys, values, recency, kept),
            "KNorm prefill": lambda keys=keys, values=values, kept=kept: torch_by_score(keys, values, -keys.norm(dim=-1), kept),
            "TOVA prefill": lambda keys=keys, values=values, last=last, kept=kept: torch_by_score(
                keys, values, torch.softmax(torch.matmul(last, keys.transpose(-1, -2)) / math.sqrt(HEAD_DIM), -1).mean(dim=2), kept),
        }
        hidden = None
        if presses is not None:
            hidden = torch.rand(1, n, QUERY_HEADS * HEAD_DIM) * 2 - 1
            cos, sin = rotary(hidden, torch.arange(n)[None])
            extra = {"position_embeddings": (cos, sin)}
        for threads in thread_counts:
            for name, work in plain.items():
                cases.append(("torch", name, n, threads, prefill_floor, work))
                if presses is not None:
                    press = presses[name]
                    cases.append(("kvpress", name, n, threads, prefill_floor,
                                  lambda press=press, hidden=hidden, keys=keys, values=values, extra=extra:
                                  press.compress(attention, hidden, keys, values, None, extra)))
            cases.append(("torch", "decode attention (SDPA)", n, threads, decode_floor,
                          lambda q=q, keys=keys, values=values: torch.nn.functional.scaled_dot_product_attention(q, keys, values, enable_gqa=True)))
            cases.append(("torch", "decode attention + H2O update", n, threads, decode_floor, eager_h2o))

    if args.cases:
        cases = [c for c in cases if any(word in c[1] for word in args.cases.split(","))]
    times = {i: [] for i in range(len(cases))}
    with torch.no_grad():
        for _ in range(args.reps + 1):  # the first round warms up and is dropped
            for i, (_, _, _, threads, _, work) in enumerate(cases):
                torch.set_num_threads(threads)
                times[i].append(timed_ms(work))
    rows = []
    print("| implementation | case | N | threads | median ms | bytes floor ms | x floor | median CPU ms |\n|---|---|---|---|---|---|---|---|")
    for i, (impl, name, n, threads, floor_bytes, _) in enumerate(cases):
        ms = statistics.median(t for t, _ in times[i][1:])
        cpu = statistics.median(c for _, c in times[i][1:])
        floor_ms = floor_bytes / bandwidth * 1e3
        rows.append((impl, name, n, threads, f"{ms:.3f}", f"{floor_ms:.3f}", f"{ms / floor_ms:.2f}", f"{cpu:.3f}"))
        print(f"| {impl} | {name} | {n} | {threads} | {ms:.2f} | {floor_ms:.2f} | {ms / floor_ms:.1f}x | {cpu:.2f} |", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["implementation", "case", "tokens", "threads", "median_ms", "floor_ms", "x_floor", "median_cpu_ms"])
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
