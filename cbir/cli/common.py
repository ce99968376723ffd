"""Helpers the commands share: opening the library, option groups, the ingest progress bar,
comma lists."""

from __future__ import annotations

import click

from cbir.cli import context_settings
from cbir.config import resolve_settings


def _open(create=False, text_model=False, **options):
    """The library of the command's settings. ``text_model``: the command will encode text, so
    the library's model starts loading on a thread before the Library's own imports."""
    settings = resolve_settings(**context_settings(), **options)
    loading = None
    if text_model:
        from cbir.preload import start_loading

        loading = start_loading(settings, warm_text=True)
    from cbir.library import Library

    return Library.open(settings, create=create, loading=loading)


def option_group(key: str):
    """click.option for a group of related options that reach the command through click's
    context under ``key`` (read them with group_values), as --db does, rather than as parameters
    of its own: a command with many options keeps a short signature, its --help unchanged."""

    def keep(ctx: click.Context, param: click.Parameter, value):
        ctx.meta.setdefault(key, {})[param.name] = value
        return value

    def option(*names, **settings):
        return click.option(*names, expose_value=False, callback=keep, **settings)

    return option


def group_values(key: str) -> dict:
    """The values of the running command's option group ``key``, by parameter name, in the
    order the command declares them."""
    ctx = click.get_current_context()
    values = ctx.meta.get(key, {})
    return {param.name: values[param.name] for param in ctx.command.params if param.name in values}


class _Progress:
    """A tqdm bar fed by the pipeline's (done, total) callback; silent when not a terminal.
    Used as a context manager so the bar is closed however the run ends."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="ingest", disable=None, smoothing=0.1)
        self.bar.update(done - self.bar.n)


def _split(values) -> tuple[str, ...]:
    """Repeatable options that also take comma-separated lists: --format jpeg,png."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())
