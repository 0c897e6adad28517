#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Explains the logit gap between smollm2_decode and llama.cpp.

ggml's CPU backend multiplies Q4_1 (and Q8_0) weights with activations that it
first quantises to 8 bits in blocks of 32 (Q8_1 / Q8_0: scale = max|x| / 127).
This script evaluates the first-step logits of a few chat prompts three ways:
llama.cpp (fp32 K/V cache), the numpy fp32 reference (what smollm2_decode
computes), and the numpy reference with that 8-bit activation rounding
emulated (fp16 block scales, as ggml stores them). The rounding noise cannot be
reproduced value for value, but |fp32 - emulated| shows how far this one
approximation alone moves the logits, to compare with |fp32 - llama.cpp|.

Usage: python3 llamacpp_gap.py [--model FILE]
"""
import argparse
import os

import numpy as np
from llama_cpp import Llama

from compare_llamacpp import PROMPTS, chat, last_logits
from reference_numpy import Model


class Q8ActivationModel(Model):
    """The numpy reference with ggml's 8-bit block quantisation of matmul inputs."""

    def mm(self, x, name):
        blocks = x.reshape(*x.shape[:-1], -1, 32)
        d = (np.abs(blocks).max(axis=-1, keepdims=True) / 127.0).astype(np.float16).astype(np.float32)
        q = np.round(blocks / np.where(d == 0, 1, d))
        return (q * d).astype(np.float32).reshape(x.shape) @ self.w[name].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("KVCOMPACT_SMOLLM2_GGUF"))
    args = ap.parse_args()
    llm = Llama(model_path=args.model, n_ctx=512, n_threads=2, type_k=0, type_v=0, verbose=False)
    fp32, q8 = Model(args.model), Q8ActivationModel(args.model)
    for p in PROMPTS[:3]:
        ids = llm.tokenize(chat(p).encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        ref = last_logits(llm)
        a, b = fp32.logits(ids), q8.logits(ids)
        print(f"{p[:40]!r}: max|dlogit| fp32-vs-llama.cpp {np.max(np.abs(a - ref)):.4f}, "
              f"8bit-emulated-vs-llama.cpp {np.max(np.abs(b - ref)):.4f}, fp32-vs-8bit-emulated {np.max(np.abs(a - b)):.4f}")


if __name__ == "__main__":
    main()
