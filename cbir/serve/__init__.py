"""`cbir serve`: the library in a browser, and an HTTP API for other programs.

The model and the indexes are loaded once, before the server answers. Request threads share the
model through a BatchingEncoder; the indexes follow what an ingest running beside the server
saves (cbir.index.manager), so searching goes on while photos are added.
"""

from __future__ import annotations

from cbir.names import IMAGES, TEXTS
from cbir.serve.security import check_binding, is_loopback

__all__ = ["create_app", "open_for_serving", "serve", "check_binding", "is_loopback"]


def create_app(*args, **kwargs):
    from cbir.serve.app import create_app as create

    return create(*args, **kwargs)


def open_for_serving(settings, ray=None):
    """The library opened for many request threads, its model and indexes loaded now; with
    ``ray`` (cbir.library.RayOptions) the image index is served by Ray actors."""
    from cbir.library import Library
    from cbir.serve.batcher import BatchingEncoder

    library = Library.open(settings)
    try:
        library.indexes.follow = True
        library.wrap_encoder(BatchingEncoder)
        if ray is not None:
            library.search_on_ray(ray)
        if library.fingerprint:  # an empty library loads its model when images arrive
            encoder = library.encoder
            if hasattr(encoder, "for_many_queries"):  # ONNX Runtime: a text graph made for throughput
                encoder.for_many_queries()
            encoder.encode_texts([""])  # load the model (ONNX: the text graph) now, not at the first query
            library.indexes.get(IMAGES)
            if library.catalog.count_texts():
                library.indexes.get(TEXTS)
    except BaseException:
        library.close()  # the Ray actors too
        raise
    return library


def serve(
    settings, *, host: str, port: int, token: str | None, upload_limit: int, echo=print, ray=None, watch=()
) -> None:
    """Open the library, then serve it until interrupted (Ctrl-C); ``ray``: as open_for_serving.
    ``watch``: folders kept indexed by a thread of the server (cbir.watch); one that is missing
    is an error before anything starts, as for `cbir watch`: a mistyped folder must not leave a
    server that silently watches nothing."""
    import uvicorn

    check_binding(host, token)
    if watch:
        from cbir.watch import check_folders

        watch = check_folders(watch)
    listening = _bind(host, port)  # before loading anything: a busy port fails at once
    try:
        library = open_for_serving(settings, ray)
    except BaseException:
        listening.close()
        raise
    app = create_app(library, token=token, host=host, upload_limit=upload_limit)
    port = listening.getsockname()[1]  # the one the system chose for --port 0
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    status = library.status()
    echo(
        f"cbir serve: {status.images:,} images in {library.path} ({status.model}, {status.index_type} index{_engine(library)})"
    )
    echo(f"open {url}{'?token=TOKEN' if token else ''} in a browser; API docs at {url}docs; Ctrl-C stops")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    watcher = None
    try:
        if watch:
            watcher = _start_watching(library, watch, echo)
        server.run(sockets=[listening])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: stopping is normal
        echo("cbir serve: stopped")
    finally:
        if watcher is not None:
            watcher.stop()
        listening.close()
        library.close()


def _bind(host: str, port: int):
    import socket

    from cbir.errors import UsageError

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Connections accepted from a socket handed to uvicorn keep Nagle's algorithm unless the
        # listening socket has it off: every keep-alive response then waited ~40 ms for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _engine(library) -> str:
    """ ", searched by N Ray actors" when the Ray engine serves the image index."""
    index = library.indexes.loaded(IMAGES)
    count = getattr(index, "actor_count", None)
    return f", {index.shard_count} shard(s) searched by {count} Ray actor(s)" if count else ""


def _start_watching(served, folders, echo):
    """cbir.watch on a thread, with a Library of its own on the served one's settings (its own
    catalogue connections and writer indexes) sharing the served model if it is loaded: the
    served library follows what the watcher saves as it follows any ingest. Each batch is one
    line."""
    from cbir.library import Library
    from cbir.watch import WatchThread

    library = Library.open(served.settings, encoder=served.loaded_encoder)
    return WatchThread.start(
        library,
        folders,
        on_batch=lambda batch: echo(f"cbir serve: {batch.summary()}"),
        on_ready=lambda watched: echo(f"cbir serve: watching {', '.join(map(str, watched))}"),
        on_error=lambda error: echo(f"cbir serve: watching stopped: {error}"),
    )
