"""The ``cbir`` command: click commands over the Library API. Domain errors become one-line
messages here and nowhere else; ``--debug`` (or CBIR_DEBUG=1) shows the traceback instead.
Heavy modules (torch, open_clip, faiss) are imported inside commands, so ``cbir --help`` is
instant."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

import click

from cbir import __version__
from cbir.errors import CbirError, CbirWarning

DEBUG_KEY = "cbir.debug"


def _set_debug(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.meta[DEBUG_KEY] = True
        logging.disable(logging.NOTSET)
        logging.getLogger().setLevel(logging.INFO)
    return value


class CbirGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except CbirError as e:
            if _debugging(ctx):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:
            # The reader went away (`cbir search ... | head`): stop quietly, as Unix tools do.
            # Python's docs: point stdout at devnull so flushing at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)  # 128 + SIGPIPE, what a shell reports for a tool killed by it
        except KeyboardInterrupt as e:
            if _debugging(ctx):
                raise
            try:  # after a hang-up the terminal may be gone
                click.echo("Interrupted: what was committed is kept; run the command again to continue.", err=True)
            except OSError:
                pass
            ctx.exit(128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT))
        except Exception as e:
            if _debugging(ctx):
                raise
            click.echo(f"Error: unexpected {type(e).__name__}: {e} (run with --debug for details)", err=True)
            ctx.exit(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``kill PID``, ``timeout``, systemd, a closed terminal): the command ends
    as at Ctrl-C, committed work kept, with the exit status a shell gives for that signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signum)


def _debugging(ctx: click.Context) -> bool:
    return bool(ctx.meta.get(DEBUG_KEY)) or os.environ.get("CBIR_DEBUG", "") not in ("", "0")


debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show full tracebacks instead of one-line errors.",
)


DATABASE_KEY = "cbir.database_url"
ENCODER_KEY = "cbir.encoder"  # --backend and --precision


def _set_database(ctx: click.Context, _param, value: str | None) -> str | None:
    if value:
        ctx.meta[DATABASE_KEY] = value
    return value


def _set_encoder_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        ctx.meta.setdefault(ENCODER_KEY, {})[param.name] = value
    return value


def database_url() -> str | None:
    """The --db of the running command (CBIR_DATABASE_URL is read by resolve_settings)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(DATABASE_KEY) if ctx is not None else None


def context_settings() -> dict:
    """--db, --backend and --precision of the running command, as resolve_settings options."""
    ctx = click.get_current_context(silent=True)
    chosen = ctx.meta.get(ENCODER_KEY, {}) if ctx is not None else {}
    return {"database_url": database_url(), **chosen}


def library_options(f):
    """--library, --db, --model, --device, --backend, --precision (each also settable through
    CBIR_* variables). --db, --backend and --precision reach resolve_settings through
    context_settings(), so commands need no parameter for them."""
    f = click.option(
        "--precision",
        metavar="fp32|int8",
        expose_value=False,
        callback=_set_encoder_option,
        help="Model precision for a new library: int8 is faster on CPUs (ONNX Runtime only) with "
        "slightly different vectors. An existing library always uses its own. [env: CBIR_PRECISION]",
    )(f)
    f = click.option(
        "--backend",
        metavar="auto|torch|onnx",
        expose_value=False,
        callback=_set_encoder_option,
        help="What runs the model; auto picks ONNX Runtime on the CPU, torch on CUDA. [env: CBIR_BACKEND]",
    )(f)
    f = click.option(
        "--device",
        metavar="auto|cpu|cuda",
        help="Where the model runs; auto picks CUDA when present. [env: CBIR_DEVICE]",
    )(f)
    f = click.option(
        "--model",
        metavar="NAME",
        help="Model for a new library, e.g. cbir-tiny or ViT-B-32:laion2b_s34b_b79k "
        "(see `cbir models`). An existing library always uses the model it was built with: "
        "leave --model out there; naming another one is an error. [env: CBIR_MODEL]",
    )(f)
    f = click.option(
        "--db",
        metavar="URL",
        expose_value=False,
        callback=_set_database,
        help="Keep the catalogue in PostgreSQL (postgresql+psycopg://USER:PASSWORD@HOST/DB), "
        "shared by many machines; the library folder keeps indexes and thumbnails. Default: "
        "SQLite in the library folder. [env: CBIR_DATABASE_URL]",
    )(f)
    f = click.option(
        "--library",
        "library",
        metavar="PATH",
        help="Library folder (default: indexes/default in a checkout, else the user data folder). [env: CBIR_LIBRARY]",
    )(f)
    return debug_option(f)


@click.group(cls=CbirGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cbir")
@debug_option
def cli():
    """cbir: search your photos by what they show, or by an example picture.

    \b
      cbir ingest ~/Pictures                 add a folder (new, changed, moved, deleted files)
      cbir search "two dogs in a frosty field"
      cbir search --image holiday.jpg        find similar pictures
      cbir search "dog" + "snow" --after 2019 --camera pixel --explain
      cbir search sunset --target text       search captions, descriptions, labels
      cbir label add photo.jpg "Rex"         your own words for an image (--tag rex)
      cbir status                            what the library holds
      cbir demo                              see it work on a generated library
    """
    # Libraries below (open_clip, huggingface_hub) log retries and warnings through handlers of
    # their own; the one-line error says what matters. --debug shows their logs.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not _debugging(click.get_current_context()):
        logging.disable(logging.CRITICAL)
    warnings.showwarning = _show_warning


_python_show_warning = warnings.showwarning


def _show_warning(message, category, *args, **kwargs) -> None:
    """cbir's own warnings (a problem that did not stop the command) as one line on stderr."""
    if issubclass(category, CbirWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _python_show_warning(message, category, *args, **kwargs)


def main() -> None:
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _terminate)
    cli(prog_name="cbir")


# Importing the command modules registers their commands on `cli`.
from cbir.cli import index_commands as _index_commands  # noqa: E402,F401
from cbir.cli import ingest as _ingest  # noqa: E402,F401
from cbir.cli import library_commands as _library_commands  # noqa: E402,F401
from cbir.cli import library_tools as _library_tools  # noqa: E402,F401
from cbir.cli import model_tools as _model_tools  # noqa: E402,F401
from cbir.cli import search as _search  # noqa: E402,F401
from cbir.cli import tools as _tools  # noqa: E402,F401
from cbir.cli import watch as _watch  # noqa: E402,F401
