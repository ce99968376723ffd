"""Filling the ONNX cache: an open_clip model's image and text towers exported to ONNX, checked
against torch on a probe batch, and written as one cache entry. Imported only when the cache lacks
a graph.

The exporter is torch's TorchScript one (dynamo=False; it needs the onnx package). On torch 2.14
the dynamo exporter (dynamo=True, which needs onnxscript too) gives the same cosines and equally
fast graphs for cbir-tiny and ViT-B-32, but takes 3 to 5 times longer (ViT-B-32: 34 s against
10 s on 2 busy cores), and older torch has the TorchScript one as its only torch.onnx.export.

Safe under concurrent first use and kill -9: the entry is built in a temporary folder beside it
and renamed into place whole; a lock file per entry makes a second process wait for the first
and use its entry; a temporary folder left by a killed export is removed by the next one. A model
that cannot be exported leaves a note of why, so later calls say so at once, until torch, onnx or
cbir change."""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbir.encode.onnx_runtime import FORMAT, INT8_META, META, complete, graph_file, new_session
from cbir.encode.spec import ModelSpec
from cbir.encode.tokenizer import KIND, VOCAB_NAME, ClipTokenizer, open_clip_vocab, trim_padding
from cbir.errors import OnnxUnavailable
from cbir.fsutil import fsync_dir

MIN_COSINE = 0.9999  # fp32 graphs against torch: a library may mix their vectors
# int8 moves vectors further; this floor only catches a broken quantisation, a library judges
# int8 on its own photos before it switches.
INT8_MIN_COSINE = 0.99
PROBE_TEXTS = [
    "a photo of a dog",
    "two dogs in a frosty field",
    "",
    "Ünïcödé 日本語 🐶 &amp; punctuation!?",
    "a long caption " * 30,  # past every context length: truncated
]
OPSET = 17  # LayerNormalization as one operator, which ONNX Runtime runs fused
PACKAGES = ("cbir", "torch", "open_clip_torch", "onnx", "onnxruntime")


def ensure(spec: ModelSpec, entry: Path, precision: str) -> None:
    """Make ``entry`` complete for ``precision``, exporting (and quantising) unless another
    process did while this one waited for the lock."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _locked(entry.parent / f"{entry.name}.lock"):
            if not (entry / META).is_file():
                _remove_stale(entry)
                _unless_refused(entry, "export", lambda: _export(spec, entry))
            if not complete(entry, precision):
                _unless_refused(entry, "int8", lambda: _quantise(entry))
    except OSError as e:
        raise OnnxUnavailable(f"cannot write the ONNX cache at {entry.parent}: {e.strerror or e}") from e


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Held while an entry is made: the kernel frees it when its holder dies, however it dies."""
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_stale(entry: Path) -> None:
    """Temporary folders of this entry: left by a killed export (the lock is ours)."""
    for stale in entry.parent.glob(f"{entry.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)


def _unless_refused(entry: Path, step: str, run) -> None:
    """Run ``step`` unless it was refused before with the same packages; record a refusal."""
    note = entry.parent / f"{entry.name}.{step}.refused"
    versions = _versions()
    try:
        refused = json.loads(note.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        refused = None
    if refused and refused.get("versions") == versions:
        raise OnnxUnavailable(refused["reason"])
    try:
        run()
    except OnnxUnavailable as e:
        with contextlib.suppress(OSError):  # the refusal matters, not its note
            note.write_text(json.dumps({"reason": str(e), "versions": versions}), encoding="utf-8")
        raise


def _versions() -> dict[str, str]:
    found = {"format": str(FORMAT)}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


def _export(spec: ModelSpec, entry: Path) -> None:
    from cbir.encode.clip import OpenClipEncoder

    encoder = OpenClipEncoder(spec, "cpu")
    reason = tokenizer_refusal(encoder.tokenizer)
    if reason:
        raise OnnxUnavailable(f"{spec.name} runs on torch only: {reason}")
    context_length = int(encoder.tokenizer.context_length)
    tmp = entry.parent / f"{entry.name}.tmp{os.getpid()}"
    tmp.mkdir()
    try:
        any_length = _export_towers(encoder, tmp)
        shutil.copyfile(open_clip_vocab(), tmp / VOCAB_NAME)
        check = _check(encoder, tmp, context_length, any_length)
        meta = {
            "format": FORMAT,
            "fingerprint": encoder.fingerprint(),
            "logit_scale": encoder.logit_scale,
            "context_length": context_length,
            "text_length": "any" if any_length else "fixed",
            "tokenizer": KIND,
            "check": check,
            "versions": _versions(),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for path in tmp.iterdir():
            _fsync(path)
        fsync_dir(tmp)
        tmp.rename(entry)
        fsync_dir(entry.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tokenizer_refusal(open_clip_tokenizer) -> str | None:
    """Why the model's tokenizer has no torch-free port (None when cbir.encode.tokenizer is it):
    open_clip's SimpleTokenizer in its default mode only; HF and SigLIP tokenizers are not."""
    name = type(open_clip_tokenizer).__name__
    if name != "SimpleTokenizer":
        return f"its tokenizer ({name}) has no torch-free port"
    clean = getattr(open_clip_tokenizer.clean_fn, "__name__", "")
    if (
        clean != "_clean_lower"
        or open_clip_tokenizer.reduction_fn is not None
        or len(open_clip_tokenizer.all_special_ids) != 2
    ):
        return "its tokenizer has options (clean, reduction mask, special tokens) the torch-free port lacks"
    return None


class _ImageTower(torch.nn.Module):
    """uint8 NHWC pixels -> normalised embeddings, with clip.py's arithmetic inside the graph, so
    the runtime does no float work in numpy."""

    def __init__(self, model, mean: tuple, std: tuple):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, pixels):
        batch = pixels.permute(0, 3, 1, 2).float().div(255).sub(self.mean).div(self.std)
        return torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)


class _TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)


class _AnyLengthTextTower(torch.nn.Module):
    """open_clip's CLIP.encode_text for tokens cut after their last end token: the positional
    embedding and causal mask sliced to the input's length. Under a causal mask the end token's
    output (what argmax and eos pooling read) does not depend on the padding after it, so a
    query of 8 tokens costs 8 positions, not 77 (ViT-B-32: 9 ms against 44 ms)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        from open_clip.transformer import text_global_pool

        model, length = self.model, tokens.shape[1]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        projection = model.text_projection
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return torch.nn.functional.normalize(x.float(), dim=-1)


class _TraceableAttention(torch.nn.Module):
    """nn.MultiheadAttention's self-attention arithmetic with no length in its reshapes: traced
    MultiheadAttention bakes the example's sequence length into the graph."""

    def __init__(self, attention: torch.nn.MultiheadAttention):
        super().__init__()
        self.attention = attention
        self.heads = attention.num_heads
        self.head_dim = attention.embed_dim // attention.num_heads

    def forward(self, query, key, value, need_weights=False, attn_mask=None):
        a = self.attention
        x = query if a.batch_first else query.transpose(0, 1)
        qkv = torch.nn.functional.linear(x, a.in_proj_weight, a.in_proj_bias)
        q, k, v = qkv.unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = torch.nn.functional.linear(out.transpose(1, 2).flatten(2), a.out_proj.weight, a.out_proj.bias)
        return (out if a.batch_first else out.transpose(0, 1)), None


def any_length_text(model) -> bool:
    """Whether the text tower is open_clip's own causal transformer with end-token pooling and
    plain self-attention, so that _AnyLengthTextTower computes exactly what encode_text does."""
    blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
    return (
        blocks is not None
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and hasattr(model, "token_embedding")
        and all(
            type(block.attn) is torch.nn.MultiheadAttention
            and block.attn._qkv_same_embed_dim
            and block.attn.in_proj_bias is not None
            and not hasattr(block, "ln_1_kv")
            for block in blocks
        )
    )


@contextlib.contextmanager
def _traceable_attention(model) -> Iterator[None]:
    """The text blocks' attention swapped for _TraceableAttention while the graph is traced; the
    torch model the graph is then checked against is the untouched original."""
    blocks = list(model.transformer.resblocks)
    originals = [block.attn for block in blocks]
    for block in blocks:
        block.attn = _TraceableAttention(block.attn)
    try:
        yield
    finally:
        for block, attention in zip(blocks, originals, strict=True):
            block.attn = attention


def _export_towers(encoder, folder: Path) -> bool:
    """Write image.onnx and text.onnx; True when the text graph takes tokens of any length."""
    pixels = torch.from_numpy(probe_images(encoder.preprocess.size)[:2])  # a batch of one may trace as a constant
    tokens = encoder.tokenizer(PROBE_TEXTS[:2])
    any_length = any_length_text(encoder.model)
    if any_length:
        tokens = tokens[:, : int(tokens.argmax(1).max()) + 1]  # not the full length, which might trace as one
    text_tower = _AnyLengthTextTower(encoder.model) if any_length else _TextTower(encoder.model)
    towers = [
        (_ImageTower(encoder.model, encoder.preprocess.mean, encoder.preprocess.std), pixels, "pixels", "image"),
        (text_tower, tokens, "tokens", "text"),
    ]
    legacy: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    raw = folder / "raw"  # the exporter's output, which puts a graph past 2 GB in a file per tensor
    raw.mkdir()
    for module, example, input_name, tower in towers:
        name = graph_file(tower, "fp32")
        axes = {0: "batch", 1: "length"} if tower == "text" and any_length else {0: "batch"}
        swapped = (
            _traceable_attention(encoder.model) if module is text_tower and any_length else contextlib.nullcontext()
        )
        try:
            import onnx

            with _quiet(), swapped:
                torch.onnx.export(
                    module.eval(),
                    (example,),
                    str(raw / name),
                    **legacy,
                    opset_version=OPSET,
                    input_names=[input_name],
                    output_names=["embeddings"],
                    dynamic_axes={input_name: axes, "embeddings": {0: "batch"}},
                )
        except ImportError as e:
            raise OnnxUnavailable(f"exporting to ONNX needs the onnx package ({e}); pip install onnx") from e
        except OSError:  # a full or read-only disk: no refusal of the model
            raise
        except Exception as e:  # the exporter raises many kinds for an operator it cannot map
            raise OnnxUnavailable(
                f"{encoder.spec.name}'s {tower} tower does not export to ONNX: {_first_line(e)}"
            ) from e
        # The weights in one file beside the graph, which ONNX Runtime maps rather than copies:
        # ViT-B-32's text tower loads in 0.6 s and 215 MB instead of 1.7 s and 407 MB.
        onnx.save_model(
            onnx.load(raw / name),
            folder / name,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{name}.data",
            size_threshold=1024,
        )
    shutil.rmtree(raw)
    return any_length


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress and warns; a command's output (--json) must stay clean."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _check(encoder, folder: Path, context_length: int, any_length: bool) -> dict:
    """Both graphs against torch on a probe batch (and a batch of one; a text graph of any length
    also on each text cut after its end token, as the runtime cuts), the torch-free tokenizer
    against open_clip's: a refusal names the smallest cosine."""
    ours = ClipTokenizer(folder / VOCAB_NAME, context_length)(PROBE_TEXTS)
    if not np.array_equal(ours, encoder.tokenizer(PROBE_TEXTS).numpy()):
        raise OnnxUnavailable(
            f"{encoder.spec.name} runs on torch only: its tokens differ from the torch-free tokenizer's"
        )
    pixels = probe_images(encoder.preprocess.size)
    expected_texts = encoder.encode_texts(PROBE_TEXTS)
    text_session = new_session(folder / "text.onnx")
    cosines = {
        "image": _cosines(encoder.encode_images(pixels), new_session(folder / "image.onnx"), "pixels", pixels),
        "text": _cosines(expected_texts, text_session, "tokens", ours),
    }
    if any_length:
        cut = [text_session.run(None, {"tokens": trim_padding(ours[i : i + 1])})[0][0] for i in range(len(ours))]
        cosines["text"] += cosine_rows(expected_texts, np.stack(cut)).tolist()
    for tower, values in cosines.items():
        if min(values) < MIN_COSINE:
            raise OnnxUnavailable(
                f"{encoder.spec.name}'s {tower} tower on ONNX Runtime differs from torch "
                f"(cosine {min(values):.6f} < {MIN_COSINE}); it runs on torch"
            )
    return {f"{tower}_min_cosine": float(min(values)) for tower, values in cosines.items()} | {
        "probe_images": len(pixels),
        "probe_texts": len(PROBE_TEXTS),
        "min_cosine_required": MIN_COSINE,
    }


def _cosines(expected: np.ndarray, session, input_name: str, inputs: np.ndarray) -> list[float]:
    got = np.concatenate([session.run(None, {input_name: inputs})[0], session.run(None, {input_name: inputs[:1]})[0]])
    expected = np.concatenate([expected, expected[:1]])
    return cosine_rows(expected, got).tolist()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def probe_images(size: int) -> np.ndarray:
    """Five uint8 [size, size, 3] images unlike each other: a colour gradient, waves, noise,
    a checkerboard, flat grey."""
    y, x = np.mgrid[0:size, 0:size] / size
    gradient = np.stack([x, y, 1 - x], -1)
    waves = np.stack([np.sin(9 * x + 3 * y), np.cos(5 * y * x * 7), np.sin(13 * y)], -1) / 2 + 0.5
    noise = np.random.default_rng(0).random((size, size, 3))
    checks = np.repeat(((np.floor(x * 8) + np.floor(y * 8)) % 2)[..., None], 3, -1)
    grey = np.full((size, size, 3), 0.5)
    return (np.stack([gradient, waves, noise, checks, grey]) * 255).round().astype(np.uint8)


def _quantise(entry: Path) -> None:
    """image.int8.onnx from image.onnx: dynamic quantisation (int8 weights, activations quantised
    as they run) of the MatMuls, written beside it by an atomic rename. The patch embedding's Conv
    stays fp32: as ConvInteger it made ViT-B-32 slower (6.6 against 8.0 img/s), no closer."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    final = entry / graph_file("image", "int8")
    for stale in entry.glob(f"{final.name}.tmp*"):  # left by a killed quantisation (the lock is ours)
        stale.unlink()
    tmp = entry / f"{final.name}.tmp{os.getpid()}"
    try:
        logging.disable(logging.WARNING)  # it advises pre-processing, and shape inference, on the root logger
        try:
            quantize_dynamic(entry / "image.onnx", tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        finally:
            logging.disable(logging.NOTSET)
        meta = json.loads((entry / META).read_text(encoding="utf-8"))
        pixels = probe_images(meta["fingerprint"]["preprocess"]["size"])
        fp32 = new_session(entry / "image.onnx").run(None, {"pixels": pixels})[0]
        int8 = new_session(tmp).run(None, {"pixels": pixels})[0]
        cosines = cosine_rows(fp32, int8)
        if cosines.min() < INT8_MIN_COSINE:
            raise OnnxUnavailable(
                f"{meta['fingerprint']['spec']}'s int8 image tower differs from fp32 "
                f"(cosine {cosines.min():.4f} < {INT8_MIN_COSINE}); use fp32"
            )
        check = {
            "min_cosine_vs_fp32": float(cosines.min()),
            "mean_cosine_vs_fp32": float(cosines.mean()),
            "probe_images": len(pixels),
            "versions": _versions(),
        }
        (entry / INT8_META).write_text(json.dumps(check, indent=1), encoding="utf-8")
        _fsync(entry / INT8_META)
        _fsync(tmp)
        tmp.rename(final)
        fsync_dir(entry)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
