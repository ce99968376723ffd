"""Index types for `cbir index rebuild --type flat|hnsw|ivf|ivfpq`: the kinds, the spec of one
index (``IndexSpec``) and the search parameters each kind takes.

No faiss here: the search loop checks parameters against an index's kind with it, and
``cbir.index.choice`` (which kind suits a library) and ``cbir.index.faiss_ops`` (building,
searching and tuning with faiss) build on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cbir.errors import UsageError

KINDS = ("flat", "hnsw", "ivf", "ivfpq")

PQ_BITS = 8
PQ_CENTROIDS = 1 << PQ_BITS  # codewords per sub-quantizer, each trained by its own k-means

# IVF-PQ re-ranks RERANK x k candidates by their exact vectors (kept in the library's database):
# PQ codes alone cap recall well below 0.95; the exact second look restores it.
RERANK = 10
DEFAULT_PARAMS = {
    "flat": {},
    "hnsw": {"efSearch": 64},
    "ivf": {"nprobe": 16},
    "ivfpq": {"nprobe": 16, "rerank": RERANK},
}
PARAM_NAMES = {"flat": (), "hnsw": ("efSearch",), "ivf": ("nprobe",), "ivfpq": ("nprobe", "rerank")}
NOT_FAISS = ("rerank",)  # cbir's own parameters, applied around the faiss search


@dataclass(frozen=True)
class IndexSpec:
    """What to build: kind, faiss factory string, search defaults, training sample size, why."""

    kind: str
    factory: str
    params: dict = field(hash=False)
    train_size: int
    reason: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"unknown index type {self.kind!r}: use one of auto, {', '.join(KINDS)}")
        object.__setattr__(self, "params", dict(self.params))  # no aliasing of the caller's dict

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "factory": self.factory,
            "params": dict(self.params),
            "train_size": self.train_size,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d) -> IndexSpec:
        try:
            return cls(
                kind=str(d["kind"]),
                factory=str(d["factory"]),
                params={str(k): int(v) for k, v in dict(d["params"]).items()},
                train_size=int(d["train_size"]),
                reason=str(d.get("reason", "")),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not an index spec: {d!r}") from err

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    @property
    def shape(self) -> dict:
        """The structural parameters in ``factory``: {"M"} for hnsw, {"nlist"[, "m"]} for IVF."""
        found = {}
        if m := re.search(r"HNSW(\d+)", self.factory):
            found["M"] = int(m.group(1))
        if m := re.search(r"IVF(\d+)", self.factory):
            found["nlist"] = int(m.group(1))
        if m := re.search(r"PQ(\d+)", self.factory):
            found["m"] = int(m.group(1))
        return found


_OPTIONS = {"nprobe": "nprobe (--nprobe)", "efSearch": "efSearch (--ef)"}


def check_params_apply(kind: str, params: dict, name: str) -> None:
    """A search parameter that no kind of the searched index uses would silently change nothing
    (--nprobe on an HNSW index): an error naming what the index is. ``kind`` is an index's
    kind, or a sharded index's kinds joined by "+"."""
    kinds = kind.split("+")
    for param in params:
        users = [k for k in KINDS if param in PARAM_NAMES[k]]
        if users and not any(param in PARAM_NAMES.get(k, ()) for k in kinds):
            own = sorted({_OPTIONS.get(p, p) for k in kinds for p in PARAM_NAMES.get(k, ()) if p not in NOT_FAISS})
            fits = f"its search parameter is {' or '.join(own)}" if own else "it is exact and takes no search parameter"
            raise UsageError(
                f"{_OPTIONS.get(param, param)} tunes {' and '.join(users)} indexes, but the {name} index is "
                f"{kind}: {fits}"
            )
