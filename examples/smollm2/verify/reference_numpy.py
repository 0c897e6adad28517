#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Independent fp32 reference of the SmolLM2 forward pass in numpy.

Weights are dequantised by the `gguf` package (gguf.quants.dequantize), the
forward pass recomputes the whole sequence with a causal mask at every step
(no KV cache at all), so it shares neither code nor cache design with
smollm2_decode. Both use fp32 weights, so their logits should agree to float
rounding; the script reports the max |logit diff| of every greedy step and
whether the greedy tokens agree.

Usage: python3 reference_numpy.py --binary BUILD/smollm2_decode --model FILE [--n 16]
Exit status 0 when tokens match and max |diff| <= --tol (default 1e-2).
"""
import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile

import numpy as np
import gguf
from gguf.quants import dequantize

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "List the first 10 prime numbers.",
]


class Model:
    def __init__(self, path):
        r = gguf.GGUFReader(path)
        f = lambda k: r.fields[k].parts[r.fields[k].data[0]][0]
        self.n_layers = int(f("llama.block_count"))
        self.n_heads = int(f("llama.attention.head_count"))
        self.n_kv = int(f("llama.attention.head_count_kv"))
        self.hidden = int(f("llama.embedding_length"))
        self.theta = float(f("llama.rope.freq_base"))
        self.eps = float(f("llama.attention.layer_norm_rms_epsilon"))
        self.hd = self.hidden // self.n_heads
        self.w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
            [int(d) for d in reversed(t.shape)]) for t in r.tensors}

    def mm(self, x, name):
        """x @ W[name].T with fp32 activations."""
        return x @ self.w[name].T

    def rms(self, x, w):
        return (x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + self.eps)).astype(
            np.float32) * w

    def rope(self, x, pos):  # x: [T, heads, hd]; rotate adjacent pairs
        inv = self.theta ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        ang = pos[:, None].astype(np.float64) * inv[None, :]
        c, s = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    def logits(self, tokens):
        """Logits after the last of `tokens` (full causal recomputation)."""
        W, T = self.w, len(tokens)
        x = W["token_embd.weight"][tokens]
        pos = np.arange(T)
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
        g = self.n_heads // self.n_kv
        for l in range(self.n_layers):
            p = f"blk.{l}."
            h = self.rms(x, W[p + "attn_norm.weight"])
            q = self.rope(self.mm(h, p + "attn_q.weight").reshape(T, self.n_heads, self.hd), pos)
            k = self.rope(self.mm(h, p + "attn_k.weight").reshape(T, self.n_kv, self.hd), pos)
            v = self.mm(h, p + "attn_v.weight").reshape(T, self.n_kv, self.hd)
            k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(self.hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = np.einsum("hts,shd->thd", s, v).reshape(T, self.hidden)
            x = x + self.mm(a, p + "attn_output.weight")
            h = self.rms(x, W[p + "ffn_norm.weight"])
            gate = self.mm(h, p + "ffn_gate.weight")
            x = x + self.mm((gate / (1 + np.exp(-gate))) * self.mm(h, p + "ffn_up.weight"), p + "ffn_down.weight")
        out = self.rms(x[-1], W["output_norm.weight"])
        return self.mm(out[None, :], "output.weight" if "output.weight" in W else "token_embd.weight")[0]


def run_engine(binary, model, prompt, n):
    with tempfile.NamedTemporaryFile(suffix=".f32", delete=False) as f:
        path = f.name
    out = subprocess.run([binary, "--model", model, "--prompt", prompt, "--n", str(n), "--print-ids",
                          "--logits-out", path], check=True, capture_output=True, text=True).stdout
    ids = {l.split(":")[0]: [int(t) for t in l.split(":", 1)[1].split()] for l in out.splitlines()
           if l.startswith(("prompt_ids:", "generated_ids:"))}
    logits = np.fromfile(path, dtype=np.float32)
    os.unlink(path)
    return ids["prompt_ids"], ids["generated_ids"], logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", default=os.environ.get("KVCOMPACT_SMOLLM2_GGUF"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tol", type=float, default=1e-2)
    args = ap.parse_args()
    m = Model(args.model)
    print(f"numpy {np.__version__}, gguf {importlib.metadata.version('gguf')}")
    ok = True
    for p in PROMPTS:
        prompt, gen, ours = run_engine(args.binary, args.model, p, args.n)
        ours = ours.reshape(len(gen), -1)
        seq, worst, same = list(prompt), 0.0, True
        for i, t in enumerate(gen):
            ref = m.logits(seq)
            worst = max(worst, float(np.max(np.abs(ref - ours[i]))))
            same &= int(np.argmax(ref)) == t
            seq.append(t)
        ok &= same and worst <= args.tol
        print(f"prompt {p[:40]!r}: {len(gen)} greedy steps, tokens {'equal' if same else 'DIFFER'}, "
              f"max|dlogit| {worst:.2e} (logit range {ours.min():.1f}..{ours.max():.1f})")
    print("overall:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
