"""--engine and the Ray options of the searching commands (cbir search, cbir serve): the image
index served by Ray actors (Library.search_on_ray). They reach the command through click's
context, like --db, so the commands take no parameters for them."""

from __future__ import annotations

import click

from cbir.cli.common import group_values, option_group
from cbir.errors import UsageError

KEY = "cbir.search_engine"
_option = option_group(KEY)  # a click option kept for ray_options, not handed to the command


def search_engine_options(f):
    """--engine, --address, --shards-per-actor, --actors, --actor-cpus (read by ray_options)."""
    options = [
        _option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            envvar="CBIR_ENGINE",
            help="Where the image index is searched: in this process, or by Ray actors holding its shards (pip install 'cbir[ray]'). [env: CBIR_ENGINE]",
        ),
        _option(
            "--address",
            metavar="ADDR",
            help="--engine ray: the cluster to join: auto (one started on this machine), ray://HOST:PORT (Ray Client) or HOST:PORT; default: a private cluster on this machine, listening on 127.0.0.1 only.",
        ),
        _option(
            "--shards-per-actor",
            type=click.IntRange(min=1),
            help="--engine ray: shards each actor holds (an unsharded index is one shard); default: one actor a shard, as many as the cluster's CPUs hold.",
        ),
        _option(
            "--actors",
            type=click.IntRange(min=1),
            help="--engine ray: how many actors share the shards (instead of --shards-per-actor).",
        ),
        _option(
            "--actor-cpus",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="--engine ray: CPUs Ray reserves for each actor.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def ray_options():
    """RayOptions for --engine ray, None for the local engine (then no Ray option may be given)."""
    values = group_values(KEY)
    if values.get("engine", "local") != "ray":
        given = [f"--{name.replace('_', '-')}" for name in ("address", "actors") if values.get(name)]
        if given:
            raise UsageError(f"{' and '.join(given)} go with --engine ray")
        return None
    from cbir.library import RayOptions

    return RayOptions(
        address=values.get("address") or None,
        actors=values.get("actors"),
        shards_per_actor=values.get("shards_per_actor"),
        num_cpus=values.get("actor_cpus", 1.0),
    )


def use_engine(library, options) -> None:
    """Serve ``library``'s image index from Ray actors when ``options`` say so."""
    if options is not None:
        library.search_on_ray(options)


def engine_info(library) -> dict:
    """Who answered the searches (for --explain): this process, or the Ray actors with the
    shards each holds and its node (RayEngine.describe)."""
    serving = library.indexes.serving
    return serving.describe() if serving is not None else {"engine": "local"}


def engine_lines(info: dict) -> list[str]:
    """``engine_info`` as --explain's lines."""
    if info["engine"] != "ray":
        return ["engine    local (this process)"]
    actors = info["actors"]
    lines = [f"engine    ray, {info['address']}: {len(actors)} shard actor{'s' if len(actors) != 1 else ''}"]
    for actor in actors:
        node = actor["node"] or "unreachable"
        shards = ", ".join(map(str, actor["shards"])) or "none"
        down = " (down: this process answers for it while it is replaced)" if actor.get("down") else ""
        lines.append(
            f"          actor {actor['actor']} on {node}: shard{'s' if len(actor['shards']) != 1 else ''} {shards}{down}"
        )
    return lines
