"""Scaling out on Ray (the optional ``cbir[ray]`` extra): distributed ingestion
(cbir.distributed.ingest) and sharded search (cbir.distributed.search). Ray is imported only
inside those modules, never by ``import cbir``."""
