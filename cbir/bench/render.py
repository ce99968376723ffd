"""`cbir bench` reports as Markdown tables (what docs/performance.md shows)."""

from __future__ import annotations


def _table(header: list[str], rows: list[list]) -> str:
    """Markdown, the first column left-aligned and the (numeric) others right-aligned."""
    from cbir.bench.search import markdown_table

    columns = [(title, "<" if i == 0 else ">") for i, title in enumerate(header)]
    return markdown_table(columns, ([str(cell) for cell in row] for row in rows))


def render(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    parts = [
        f"Measured on {m['cores']} CPU cores ({m['cpu']}), torch {m['torch']} with {m['torch_threads']} "
        f"threads, GPU: {m['gpu'] or 'none'}; model {s['model']} on {s['device']}, batch {s['batch']}"
        f"{' (quick)' if s['quick'] else ''}; {report.get('seconds', 0):.0f} s in all."
    ]
    if "backends" in report:
        from cbir.bench.backends import backends_tables

        parts.append("**Backends** (this CPU, side by side)\n\n" + backends_tables(report["backends"]))
    if "ingest" in report:
        parts.append(
            "**Ingest** (images/s; ceiling: the model's forward pass alone on preprocessed pixels)\n\n"
            + _table(
                ["photos", "images", "end to end", "ceiling", "naive", "end to end / ceiling", "end to end / naive"],
                [
                    [
                        f"{r['set']} ({r['megapixels'][0]}-{r['megapixels'][1]} MP)",
                        r["images"],
                        f"{r['end_to_end']:.1f}",
                        f"{r['ceiling']:.1f}",
                        f"{r['naive']:.1f}",
                        f"{r['vs_ceiling']:.2f}",
                        f"{r['vs_naive']:.1f}x",
                    ]
                    for r in report["ingest"]
                ],
            )
        )
        stages = sorted({k for r in report["ingest"] for k in r["stages"]})
        parts.append(
            "**Where the ingest's time goes** (seconds; read and decode are summed over the worker "
            "processes, so they overlap encoding)\n\n"
            + _table(
                ["photos", *stages, "wall"],
                [
                    [r["set"], *(f"{r['stages'].get(k, 0):.2f}" for k in stages), f"{r['seconds']:.2f}"]
                    for r in report["ingest"]
                ],
            )
        )
    if "decode" in report:
        d = report["decode"]
        parts.append(
            "**Decode** (camera-size JPEGs, one process)\n\n"
            + _table(
                [
                    "images",
                    "full decode/s",
                    "draft decode/s",
                    "speedup",
                    "cosine min",
                    "cosine mean",
                    "draft valid (>= 0.99)",
                ],
                [
                    [
                        d["images"],
                        f"{d['full_per_s']:.2f}",
                        f"{d['draft_per_s']:.2f}",
                        f"{d['speedup']:.1f}x",
                        f"{d['cosine_min']:.4f}",
                        f"{d['cosine_mean']:.4f}",
                        "yes" if d["valid"] else "no",
                    ]
                ],
            )
        )
    if "text" in report:
        t = report["text"]
        parts.append(f"**Text encoding** of one query: p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms")
    if "search" in report:
        from cbir.bench.search import search_table

        parts.append("**Search** (recall@10 against exact search)\n\n" + search_table(report["search"]))
    if "filtered" in report:
        from cbir.bench.filtered import filtered_table

        parts.append("**Filtered search**\n\n" + filtered_table(report["filtered"]))
    if "memory" in report:
        parts.append(
            "**Memory** (peak RSS of a process doing only this)\n\n"
            + _table(["what", "peak RSS"], [[r["what"], f"{r['peak_rss_mb']:.0f} MB"] for r in report["memory"]])
        )
    if "gpu" in report:
        g = report["gpu"]
        if "skipped" in g:
            parts.append(f"**GPU**: skipped ({g['skipped']})")
        else:
            rows = [
                [
                    r["images"],
                    f"{r['end_to_end']:.0f}",
                    f"{r['ceiling']:.0f}",
                    f"{r['vs_ceiling']:.2f}",
                    f"{100 * r['model_utilisation']:.1f}%" if "model_utilisation" in r else "-",
                ]
                for r in g["rows"]
            ]
            parts.append(
                f"**GPU** ({g['device']}, fp16)\n\n"
                + _table(["images", "end to end/s", "ceiling/s", "ratio", "model utilisation"], rows)
            )
            if isinstance(g.get("search"), list):
                from cbir.bench.search import search_table

                parts.append("**faiss on the GPU**\n\n" + search_table(g["search"]))
            elif g.get("search"):
                parts.append(f"faiss on the GPU: skipped ({g['search']['skipped']})")
    if "serve" in report:
        from cbir.bench.serve import serve_table

        v = report["serve"]
        parts.append(
            f"**cbir serve under load** ({v['images']} photos, {v['model']} on {v['device']}; each row "
            f"{v['seconds_each']:g} s of clients on 127.0.0.1 sharing the machine with the server)\n\n" + serve_table(v)
        )
    if "ray" in report:
        parts.append(_on_ray("Sharded search on Ray", report["ray"], _ray_search))
    if "ray-ingest" in report:
        parts.append(_on_ray("Ingest on Ray", report["ray-ingest"], _ray_ingest))
    return "\n\n".join(parts)


def _on_ray(title: str, section: dict, describe) -> str:
    """A Ray section: its heading and table, or why it was skipped (no Ray here)."""
    if "skipped" in section:
        return f"**{title}**: skipped ({section['skipped']})"
    return f"**{title}** ({describe(section)}"


def _ray_search(r: dict) -> str:
    from cbir.bench.ray_search import ray_search_table

    return (
        f"{r['vectors']:,} vectors of {r['dim']} dimensions in {r['shards']} shards on {r['actors']} actors "
        f"of a local Ray, vs the same shards searched in this process; top-{r['k']}, one query per call "
        f"unless batched)\n\n" + ray_search_table(r)
    )


def _ray_ingest(r: dict) -> str:
    from cbir.bench.ray_ingest import ray_ingest_table

    return (
        f"{r['images']} web-size JPEGs, {r['model']}, batch {r['batch']}, best of {r['rounds']} alternating "
        f"rounds)\n\n" + ray_ingest_table(r)
    )
