"""Held-out Brown perplexity of SmolLM2-135M-Instruct cut to its first N blocks (issue 11).

Why results/lamo/smollm2.sh runs all 30 blocks: `dtune lamo --lm-layers N` keeps the first N blocks and
the final norm and tied head, and every such cut breaks the LM as a language model. Measured on
2026-12-06 (8 held-out blocks of 128 tokens, one torch thread): 52.3 with all 30 blocks; 7.0e8 with 20;
1.8e9 with 15; 9.0e8 with 10; 1.0e8 with 6; 3.9e7 with 3. A cut LM's language loss and perplexity
would say nothing about the language ability LaMo claims to keep.

    make smollm2 corpus && .venv/bin/python results/lamo/smollm2_truncation.py
"""
import sys

import torch

from dtune.data.text import perplexity, split_heldout, text_documents, tokenize
from dtune.models.lm import load_lm, load_tokenizer


def main(blocks=(30, 20, 15, 10, 6, 3), block=128, n_blocks=8) -> None:
    torch.set_num_threads(1)
    try:
        lm, tok = load_lm("smollm2"), load_tokenizer("smollm2")
    except FileNotFoundError as e:
        sys.exit(str(e))
    held = tokenize(split_heldout(text_documents(None))[1], tok)  # the held-out split dtune lamo measures on
    whole = lm.transformer.h
    for n in blocks:
        lm.transformer.h = whole[:n]
        print(f"first {n:2d} blocks: perplexity {perplexity(lm, held, block, n_blocks, lm):.3g}", flush=True)


if __name__ == "__main__":
    main()
