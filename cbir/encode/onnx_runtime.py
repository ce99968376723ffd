"""open_clip models on the CPU through ONNX Runtime, from graphs exported once per model into the
user's cache (cbir.encode.onnx_export writes the entries). This module imports onnxruntime and
numpy, never torch or open_clip: a text query on a cached model loads the tokenizer and the text
graph alone (ViT-B-32: 255 MB peak RSS for a whole process, against torch's 1.4 GB).

A cache entry, ``<cache>/onnx/<key>/``, is created whole by one rename: meta.json (written last),
image.onnx and text.onnx (uint8 NHWC pixels / int64 tokens in, L2-normalised float32 out, dynamic
batch; tokens of any length where meta.json says "text_length": "any"), the tokenizer's vocabulary; image.int8.onnx joins it when int8 is first asked for."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from cbir.encode import tokenizer
from cbir.encode.spec import ModelSpec, Preprocess, make_fingerprint, parse_model_spec
from cbir.errors import OnnxUnavailable, UsageError

# The graphs' inputs and outputs and the entry's layout; a change makes new entries. 2: text
# graphs of open_clip's own text tower take tokens of any length (meta.json "text_length": "any").
FORMAT = 2
PRECISIONS = ("fp32", "int8")  # int8 quantises the image tower only: text queries stay fp32
META = "meta.json"
INT8_META = "image.int8.json"


def cache_root(cache_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Where exported graphs live: ``cache_dir``, else $CBIR_CACHE_DIR, else the platform's user
    cache folder (e.g. ~/.cache/cbir), each with an onnx/ folder inside."""
    env = os.environ if env is None else env
    base = cache_dir or env.get("CBIR_CACHE_DIR")
    if not base:
        import platformdirs

        base = platformdirs.user_cache_dir("cbir", appauthor=False)
    return Path(base).expanduser() / "onnx"


def entry_key(spec: ModelSpec) -> str:
    """The name of a model's entry: a hash of the fingerprint's fields known before the model
    loads (its dim and preprocessing come from the loaded model and are kept in meta.json)."""
    identity = {"format": FORMAT, "model": spec.arch, "weights": spec.weights_id()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def graph_file(tower: str, precision: str) -> str:
    return "image.int8.onnx" if (tower, precision) == ("image", "int8") else f"{tower}.onnx"


def complete(entry: Path, precision: str) -> bool:
    return (entry / META).is_file() and (entry / graph_file("image", precision)).is_file()


def onnx_encoder(
    spec: ModelSpec | str, precision: str = "fp32", cache_dir: str | os.PathLike | None = None
) -> OnnxEncoder:
    """The model on ONNX Runtime, from the cache, or exported into it first (which loads the model
    with torch, once per model; int8 is quantised from the fp32 graph once). Raises OnnxUnavailable,
    saying why, for a model that cannot run there: the caller then uses torch. A model that does
    not load at all raises ModelLoadError, as torch would."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    entry = cache_root(cache_dir) / entry_key(spec)
    if not complete(entry, precision):
        from cbir.encode import onnx_export  # torch and open_clip: only to fill the cache

        onnx_export.ensure(spec, entry, precision)
    return OnnxEncoder(spec, entry, precision)


class OnnxEncoder:
    """The Encoder protocol on ONNX Runtime. Each tower's session is made on its first use, so a
    process that only searches by text never reads the image graph."""

    device = "cpu"

    def __init__(self, spec: ModelSpec, entry: Path, precision: str = "fp32", threads: int | None = None):
        meta = json.loads((entry / META).read_text(encoding="utf-8"))
        self.spec = spec
        self.entry = entry
        self.precision = precision
        self.dim = int(meta["fingerprint"]["dim"])
        preprocess: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in meta["fingerprint"]["preprocess"].items()
        }
        self.preprocess = Preprocess(**preprocess)
        self.logit_scale = meta["logit_scale"]
        self.meta = meta
        self._threads = threads or default_threads()
        self._sessions: dict[str, onnxruntime.InferenceSession] = {}
        self._tokenizer: tokenizer.ClipTokenizer | None = None
        self._loading = threading.Lock()  # serve's request threads may arrive together
        self._prepack_text = False  # see for_many_queries

    def for_many_queries(self) -> None:
        """Load the text tower for throughput rather than for a quick start (weights prepacked;
        see new_session): for a process that answers many queries, as cbir serve does."""
        with self._loading:
            self._prepack_text = True
            self._sessions.pop("text", None)

    def fingerprint(self) -> dict:
        """The same as torch's for fp32, whose vectors are interchangeable with torch's."""
        fingerprint = make_fingerprint(self.spec, self.dim, self.preprocess)
        if self.precision != "fp32":
            fingerprint["precision"] = self.precision
        return fingerprint

    def recipe(self):
        """How another process (a Ray worker) opens the same encoder: ``recipe()(device)``."""
        return partial(_reopen, self.spec, self.precision, self.entry.parent.parent)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [n, S, S, 3] -> L2-normalised float32 [n, dim]; the graph normalises the pixels."""
        pixels = np.require(np.asarray(pixels), np.uint8, ["C"])
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._session("image").run(None, {"pixels": pixels})[0]

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        session = self._session("text")
        assert self._tokenizer is not None  # loaded with the text session
        tokens = self._tokenizer(list(texts))
        if self.meta.get("text_length") == "any":
            tokens = tokenizer.trim_padding(tokens)
        return session.run(None, {"tokens": tokens})[0]

    def _session(self, tower: str) -> onnxruntime.InferenceSession:
        if tower not in self._sessions:
            with self._loading:
                if tower not in self._sessions:
                    if tower == "text":
                        self._tokenizer = tokenizer.ClipTokenizer(
                            self.entry / tokenizer.VOCAB_NAME, int(self.meta["context_length"])
                        )
                    path = self.entry / graph_file(tower, self.precision)
                    try:
                        prepack = tower == "image" or self._prepack_text  # images come in batches
                        self._sessions[tower] = new_session(path, self._threads, prepack)
                    except Exception as e:  # onnxruntime's own kinds, for a damaged file
                        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                        raise OnnxUnavailable(
                            f"cannot load {path} ({detail}); remove {self.entry} and it is exported again"
                        ) from e
        return self._sessions[tower]


def _reopen(spec: ModelSpec, precision: str, cache_dir: Path, device: str = "cpu") -> OnnxEncoder:
    return onnx_encoder(spec, precision, cache_dir)


def new_session(path: Path, threads: int | None = None, prepack: bool = True) -> onnxruntime.InferenceSession:
    """``prepack``: ONNX Runtime copies the MatMul weights into its blocked layout at load, which
    pays off over many runs (ViT-B-32's text tower: 0.2 s more to load, 8 ms a query instead of
    15); a process that encodes one query does better without."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1  # the towers are one chain of operators
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
    # Idle threads sleep rather than spin: decode workers (and other programs) share the cores;
    # on a busy 2-core machine a ViT-B-32 text query took 190-220 ms this way, 350 ms spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def default_threads() -> int:
    """OMP_NUM_THREADS when set (as torch honours it), else one thread per physical core this
    process may run on: GEMMs gain nothing from a core's second hyperthread."""
    requested = os.environ.get("OMP_NUM_THREADS", "")
    if requested.isdigit() and int(requested) > 0:
        return int(requested)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # no sysfs (not Linux): count logical CPUs
            return max(1, len(cpus))
    return max(1, len(cores))
