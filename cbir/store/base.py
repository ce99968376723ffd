"""What every part of the Catalog shares: its engines, the meta table (versions, the model
fingerprint), the roots, and counting rows."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, func, insert, select, update

from cbir.store.db import for_writing
from cbir.store.models import Meta, Root
from cbir.store.records import MODEL, TEXT_VERSION, VECTOR_VERSION


class CatalogBase:
    """The engines and what every concern of the Catalog uses; see cbir.store.catalog."""

    def __init__(self, engine: Engine, dim: int | None = None):
        self.engine = engine  # reads
        self._writer = for_writing(engine)  # write transactions: BEGIN IMMEDIATE
        self.dim = dim

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(Meta.value).where(Meta.key == key)).scalar_one_or_none()

    def set_meta(self, key: str, value: str) -> None:
        with self._writer.begin() as c:
            self._put_meta(c, key, value)

    @staticmethod
    def _put_meta(c, key: str, value: str) -> None:
        if c.execute(select(Meta.key).where(Meta.key == key)).first():
            c.execute(update(Meta).where(Meta.key == key).values(value=value))
        else:
            c.execute(insert(Meta).values(key=key, value=value))

    def model_fingerprint(self) -> dict | None:
        raw = self.get_meta(MODEL)
        return json.loads(raw) if raw else None

    def set_model_precision(self, precision: str) -> bool:
        """Record the precision new images are encoded at: the fingerprint's "precision", left
        out for fp32 as an fp32 encoder's fingerprint leaves it out. False when it already was;
        LookupError for a library that has no model yet."""
        with self._writer.begin() as c:
            raw = c.execute(select(Meta.value).where(Meta.key == MODEL)).scalar_one_or_none()
            if not raw:
                raise LookupError("the library has no model yet")
            fingerprint = json.loads(raw)
            if fingerprint.get("precision", "fp32") == precision:
                return False
            fingerprint.pop("precision", None)
            if precision != "fp32":
                fingerprint["precision"] = precision
            self._put_meta(c, MODEL, json.dumps(fingerprint))
            return True

    def vector_version(self) -> int:
        return int(self.get_meta(VECTOR_VERSION) or 0)

    def text_version(self) -> int:
        return int(self.get_meta(TEXT_VERSION) or 0)

    # -- roots -------------------------------------------------------------------------------
    def roots(self) -> dict[int, Path]:
        with self.engine.connect() as c:
            return {i: Path(p) for i, p in c.execute(select(Root.id, Root.path))}

    # -- counting ----------------------------------------------------------------------------
    def _count(self, table) -> int:
        with self.engine.connect() as c:
            return c.execute(select(func.count()).select_from(table)).scalar_one()


def _bump(c, key: str, changed: bool) -> int:
    """The version counter ``key``, incremented when ``changed``."""
    version = int(c.execute(select(Meta.value).where(Meta.key == key)).scalar_one_or_none() or 0)
    if changed:
        version += 1
        CatalogBase._put_meta(c, key, str(version))
    return version
