"""`cbir watch`: keep the library up to date with folders as files land, change, move and go
(cbir.watch), one line per batch."""

from __future__ import annotations

import signal

import click

from cbir.cli import Terminated, cli, context_settings, library_options
from cbir.cli.render import echo_json
from cbir.config import resolve_settings


@cli.command()
@click.argument("folders", nargs=-1, required=True, metavar="FOLDER...")
@library_options
@click.option(
    "--debounce",
    type=click.FloatRange(min=0.1, max=3600),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Quiet before a batch of changes is ingested (a steady stream is ingested at least every 10 s, or every "
    "SECONDS when longer).",
)
@click.option(
    "--exclude",
    "excludes",
    metavar="GLOB",
    multiple=True,
    help="Leave out the files and folders matching GLOB, as `cbir ingest --exclude` (remembered for the folder's "
    "root; repeatable). The defaults, .cbirignore files and the patterns remembered before apply too.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each batch as a line of JSON.")
def watch(folders, library, model, device, debounce, excludes, as_json):
    """Keep the library up to date with FOLDER... as files land, change, move and go: first an
    ingest of each folder (it may have changed while nobody watched), then each batch of
    changes, gathered until the folders are quiet for --debounce seconds, goes through the same
    ingest as `cbir ingest` (moved files keep their vectors, deleted ones leave the library).
    Ctrl-C stops it; what was ingested is kept.

    \b
    Examples:
      cbir watch ~/Pictures
      cbir watch ~/Pictures ~/Downloads/camera --exclude 'raw/'
      cbir serve --watch ~/Pictures          the same, inside the web server
    """
    from cbir.watch import check_folders

    exclude = list(excludes) if excludes else None
    watched = check_folders(folders, exclude)  # a missing folder is an error before the library opens
    settings = resolve_settings(**context_settings(), library=library, model=model, device=device)
    from cbir.library import Library
    from cbir.watch import watch as keep_watching

    def batch_line(batch) -> None:
        if as_json:
            echo_json(batch.as_dict())
        else:
            click.echo(batch.summary())

    def ready(folders) -> None:
        if as_json:
            echo_json({"kind": "watching", "folders": [str(f) for f in folders]})
        else:
            names = ", ".join(map(str, folders))
            click.echo(f"watching {names} (batches after {debounce:g} s of quiet); Ctrl-C stops")

    received: list[int] = []
    with _remembering_signals(received), Library.open(settings, create=True) as lib:
        try:
            keep_watching(
                lib,
                watched,
                debounce=debounce,
                on_batch=batch_line,
                on_ready=ready,
                exclude=exclude,
            )
        except KeyboardInterrupt as e:
            # A signal that came while the watcher waited reaches us as a plain KeyboardInterrupt
            # (watchfiles raises its own); the exit status still names the signal.
            if not isinstance(e, Terminated) and received and received[-1] != signal.SIGINT:
                raise Terminated(received[-1]) from None
            raise


class _remembering_signals:
    """SIGTERM and SIGHUP as the CLI handles them (cbir.cli.Terminated), their numbers noted in
    ``received``: one that comes while watchfiles waits is turned by it into a KeyboardInterrupt
    that no longer says which signal it was."""

    def __init__(self, received: list[int]):
        self.received = received
        self.saved: dict[int, object] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None), signal.SIGINT):
            if sig is not None:
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.received.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    def __exit__(self, *exc):
        for sig, previous in self.saved.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
