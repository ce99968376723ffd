"""Distributed ingestion overhead: the same ingest on the local engine and on a private 2-CPU
local Ray cluster, images/s of each and the ratio, measured in one run (needs cbir[ray]).

    python benchmarks/ray_ingest.py                         # 256 photos, cbir-tiny
    python benchmarks/ray_ingest.py --images 512 --model ViT-B-32:none --json row.json

The work is cbir.bench.ray_ingest's; this prints its Markdown table, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir.bench.ray_ingest import ray_ingest_benchmark, ray_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="cbir-tiny")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster and local decode workers")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the row as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cbir-ray-bench-") as tmp:
        row = ray_ingest_benchmark(Path(tmp), images=args.images, model=args.model, cpus=args.cpus,
                                   batch=args.batch, rounds=args.rounds,
                                   say=lambda m: print(m, file=sys.stderr, flush=True))
    print(ray_table(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
