"""The HTTP API and web page of `cbir serve`: the same planner as `cbir search`, read-only.

GET  /api/search?q=...&k=20&after=2019&folder=trips&explain=true   text -> image (or -> text)
     ...&like=ID&unlike=ID (repeatable; q optional with like)       relevance feedback (Rocchio)
POST /api/search/image   (multipart "file", same parameters, crop)  uploaded image -> image
GET  /api/images/{id}/similar                                     library image -> image
GET  /api/images/{id}  ./thumbnail?size=320  ./original           metadata and files, by id
     (a PDF page's or video frame's original: its whole file, in byte ranges)
GET  /api/status                                                   the library and the server
GET  /   the web page; /docs and /openapi.json describe the API
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

import cbir
from cbir.errors import CbirError, EmptyLibrary, EngineUnavailable, LibraryLocked, UsageError
from cbir.library import ImageData, SearchRequest
from cbir.library import Query as SearchQuery  # fastapi.Query is a query-string parameter
from cbir.serve.files import ImageFiles, ImageGone, Opened, Served
from cbir.serve.gate import DECODE_QUEUE, DECODE_SLOTS, RETRY_AFTER_SECONDS, DecodeGate, ServerBusy
from cbir.serve.ranges import Unsatisfiable, chunks, requested_range
from cbir.serve.security import LOOPBACK_NAMES, Guard

log = logging.getLogger("cbir.serve")

STATIC = Path(__file__).with_name("static")
UPLOAD_LIMIT = 25_000_000  # bytes of an uploaded query image (cbir serve --upload-limit 25MB)
MAX_K = 500
MAX_OFFSET = 10_000
MAX_QUERY_CHARS = 2_000
MAX_FEEDBACK = 100  # liked or unliked images a search may name (each is one stored vector)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers around the upload
# The page loads nothing from elsewhere; /docs (Swagger UI from a CDN) is left out of this. Its
# <video> of a frame's original is same-origin media (default-src 'self'); a PDF original opened
# under this policy shows in Chromium's viewer (checked in tests/test_serve_browser.py).
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class TooLarge(UsageError):
    """An upload over the limit."""


STATUS_OF = {
    TooLarge: 413,
    UsageError: 400,
    ImageGone: 404,
    EmptyLibrary: 409,
    LibraryLocked: 503,
    ServerBusy: 503,
    EngineUnavailable: 503,  # the Ray cluster cannot answer now
}


@dataclass(frozen=True)
class SearchParams:
    """A search from the query string: its text (the whole query, or text added to an image),
    the library images its results should look like or not (ids: relevance feedback) and the
    request it runs with, to which each endpoint adds its query."""

    q: str | None
    request: SearchRequest
    like: tuple[int, ...] = ()
    unlike: tuple[int, ...] = ()


def search_params(
    q: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CHARS,
            description='Query text; may combine terms: "dog" + "snow" - "indoors". With an image: text added to it.',
        ),
    ] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="Results per page.")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many results (paging).")] = 0,
    target: Annotated[
        Literal["images", "text"], Query(description="Search images, or the library's texts.")
    ] = "images",
    mode: Annotated[Literal["semantic", "keyword", "hybrid"] | None, Query()] = None,
    after: Annotated[
        str | None, Query(max_length=40, description="Taken on or after (2019, 2019-06, 2019-06-01).")
    ] = None,
    before: Annotated[str | None, Query(max_length=40, description="Taken before.")] = None,
    folder: Annotated[list[str], Query(description="In this folder or below (repeat for any of several).")] = [],
    camera: Annotated[list[str], Query(description="Camera contains this text (repeat for any of several).")] = [],
    format: Annotated[list[str], Query(description="File format: jpeg, png, ... (repeat or comma-separate).")] = [],
    tag: Annotated[list[str], Query(description="Has this label (repeat to require several).")] = [],
    where: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CHARS,
            description='Filter expression, as cbir search --where: taken >= 2019-06-01 and camera ~ "Pixel".',
        ),
    ] = None,
    min_width: Annotated[int | None, Query(ge=1)] = None,
    min_height: Annotated[int | None, Query(ge=1)] = None,
    min_score: Annotated[
        float | None, Query(ge=-1, le=1, description="Only results with cosine similarity at least this.")
    ] = None,
    sort: Annotated[Literal["score", "date"], Query()] = "score",
    dedup: Annotated[bool, Query(description="Collapse near-identical results.")] = False,
    frames: Annotated[bool, Query(description="Every matching frame of a video, not only its best.")] = False,
    strategy: Annotated[Literal["auto", "ann", "exact-subset", "ann-post-filter"], Query()] = "auto",
    nprobe: Annotated[int | None, Query(ge=1, le=65536)] = None,
    ef: Annotated[int | None, Query(ge=1, le=65536)] = None,
    explain: Annotated[bool, Query(description="Include the executed plan and its timings.")] = False,
    like: Annotated[
        list[int],
        Query(
            max_length=MAX_FEEDBACK,
            description="More like this library image (an id; repeatable): relevance feedback, as cbir search --like.",
        ),
    ] = [],
    unlike: Annotated[
        list[int],
        Query(max_length=MAX_FEEDBACK, description="Less like this library image (an id; repeatable)."),
    ] = [],
) -> SearchParams:
    request = SearchRequest.from_options(
        k=k,
        offset=offset,
        target=target,
        mode=mode,
        after=after,
        before=before,
        folder=folder,
        camera=camera,
        formats=format,
        tag=tag,
        min_width=min_width,
        min_height=min_height,
        where=where or None,  # an empty field of a form is no expression
        min_score=min_score,
        sort=sort,
        dedup=dedup,
        frames=frames,
        strategy=strategy,
        nprobe=nprobe,
        ef=ef,
        explain=explain,
    )
    like, unlike = list(dict.fromkeys(like)), list(dict.fromkeys(unlike))
    both = set(like) & set(unlike)
    if both:
        raise UsageError(f"image {min(both)} is in both like and unlike")
    return SearchParams(q.strip() if q and q.strip() else None, request, tuple(like), tuple(unlike))


Params = Annotated[SearchParams, Depends(search_params)]
ImageId = Annotated[int, PathParameter(ge=1, le=2**63 - 1, description="An image id from a search result.")]


def create_app(
    library,
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    upload_limit: int = UPLOAD_LIMIT,
    decode_slots: int = DECODE_SLOTS,
    decode_queue: int = DECODE_QUEUE,
) -> Guard:
    """The app for an open Library (searched from many threads: give it a BatchingEncoder, as
    cbir.serve.serve does). With a token every request must carry it; without one only requests
    addressed to this machine's loopback names are answered. Uploaded images and thumbnails
    made from originals are decoded ``decode_slots`` at a time (cbir.serve.gate)."""
    app = FastAPI(
        title="cbir",
        version=cbir.__version__,
        description="Search an image library by text, by example or by uploaded image. Read-only.",
    )
    gate = DecodeGate(decode_slots, decode_queue)
    app.state.decode_gate = gate
    _add_headers_and_errors(app)
    _add_search_routes(app, library, gate, upload_limit)
    _add_image_routes(app, library, ImageFiles(library.catalog, library.path, gate))
    _add_status_and_page(app, library, gate, upload_limit, token)
    # The guard wraps everything, so a request without the token (or for another host) reaches
    # nothing at all, and a body over the limit is refused (declared) or cut off (streamed).
    allowed = tuple(dict.fromkeys((*LOOPBACK_NAMES, host.lower())))
    return Guard(app, token=token, allowed_hosts=allowed, max_body=upload_limit + FORM_OVERHEAD)


def _add_headers_and_errors(app: FastAPI) -> None:
    """Security headers on every response; every error as one JSON line (see _error)."""

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if not request.url.path.startswith(("/docs", "/redoc")):
            response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
        return response

    @app.exception_handler(CbirError)
    @app.exception_handler(ImageGone)
    async def known_error(_request: Request, e: Exception):
        status = next((code for kind, code in STATUS_OF.items() if isinstance(e, kind)), 500)
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if isinstance(e, (ServerBusy, EngineUnavailable)) else None
        return _error(str(e), type(e).__name__, status, retry)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException):  # unknown paths, wrong methods
        return _error(str(e.detail), e.detail.replace(" ", ""), e.status_code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_request: Request, e: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or err['loc'][0]}: {err['msg']}" for err in e.errors()
        )
        return _error(problems, "UsageError", 400)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(f"internal error: {type(e).__name__}: {e}", "InternalError", 500)


def _add_search_routes(app: FastAPI, library, gate: DecodeGate, upload_limit: int) -> None:
    """Search by text, by an uploaded image and by a library image, each optionally plus text."""

    def feedback(params: SearchParams, like: tuple[int, ...] = ()) -> dict:
        """The Query fields of a search's liked and unliked ids: library paths (an unknown id is a 404)."""
        return {
            "like": [Path(_image_info(library, i).path) for i in (*like, *params.like)],
            "unlike": [Path(_image_info(library, i).path) for i in params.unlike],
        }

    def echoed(params: SearchParams, echo: dict) -> dict:
        """What the answer's ``query`` repeats: the text, then the feedback ids given."""
        if params.q:
            echo["text"] = params.q
        if params.like:
            echo["like"] = [*echo.get("like", []), *params.like]
        if params.unlike:
            echo["unlike"] = list(params.unlike)
        return echo

    def run_search(params: SearchParams, query: SearchQuery, echo: dict) -> dict:
        started = time.perf_counter()
        [results] = library.run_search(params.request.asking(query))
        body = {
            "query": echo,
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "count": len(results),
            "hits": [_hit_json(hit) for hit in results],
        }
        if params.request.explain:
            body["plan"] = results.plan.as_dict()
        return body

    @app.get("/api/search", summary="Search by text (images, or texts with target=text), with like/unlike feedback")
    def search(params: Params) -> dict:
        if params.q is None and not params.like:
            raise UsageError("give a query text or a liked image: /api/search?q=... or ?like=ID")
        return run_search(params, SearchQuery(text=params.q, **feedback(params)), echoed(params, {}))

    @app.post("/api/search/image", summary="Search by an uploaded image, or a box of it (optionally plus text)")
    def search_by_image(
        params: Params,
        file: Annotated[UploadFile, File(description="The query image.")],
        crop: Annotated[
            str | None,
            Query(
                max_length=200, description="Search by this box of the image only: x,y,w,h, fractions of it as shown."
            ),
        ] = None,
        crop_field: Annotated[str | None, Form(alias="crop", max_length=200, include_in_schema=False)] = None,
    ) -> dict:
        given = crop if crop is not None else crop_field  # a query parameter or a form field
        with gate.slot():  # waiting, the upload stays in its spooled file, not in memory
            data = file.file.read(upload_limit + 1)
            if len(data) > upload_limit:
                raise TooLarge(
                    f"the uploaded image is over the limit of {upload_limit:,} bytes (cbir serve --upload-limit)"
                )
            name = f"uploaded image {file.filename!r}" if file.filename else "uploaded image"
            query = SearchQuery(
                text=_added_text(params.q), image=ImageData(data, name), crop=given or None, **feedback(params)
            )
            echo = {"image": file.filename or "upload", **({"crop": str(query.crop)} if query.crop else {})}
            return run_search(params, query, echoed(params, echo))

    @app.get("/api/images/{image_id}/similar", summary="Images similar to a library image (optionally plus text)")
    def similar(image_id: ImageId, params: Params) -> dict:
        info = _image_info(library, image_id)
        if image_id in params.unlike:
            raise UsageError(f"image {image_id} is in both like and unlike")
        if params.like or params.unlike:  # the image is one more liked one: as ?like=ID&like=...
            echo = echoed(params, {"like": [image_id]})
            return run_search(params, SearchQuery(text=params.q, **feedback(params, (image_id,))), echo)
        echo = {"like": image_id, **({"text": params.q} if params.q else {})}
        return run_search(params, SearchQuery(text=_added_text(params.q), like=Path(info.path)), echo)


def _add_image_routes(app: FastAPI, library, files: ImageFiles) -> None:
    """An image's metadata and texts, its thumbnails and its original file, by id."""

    @app.get("/api/images/{image_id}", summary="An image's metadata and texts")
    def image(image_id: ImageId) -> dict:
        info = _image_info(library, image_id)
        stored = library.catalog.image_file(image_id)
        texts = [{"source": source, "text": text} for source, text in library.catalog.texts_of(image_id)]
        return {**_hit_json(info), "texts": texts, "extra": stored.extra if stored else {}}

    @app.get("/api/images/{image_id}/thumbnail", summary="A WebP thumbnail (160, 320, 640 or 1280 px)")
    def thumbnail(image_id: ImageId, request: Request, size: Annotated[int, Query(ge=1, le=4096)] = 320) -> Response:
        return _send(files.thumbnail(image_id, size), request)

    @app.get(
        "/api/images/{image_id}/original",
        summary="The image file as ingested (a PDF page's or video frame's: the whole file; Range requests work)",
    )
    def original(image_id: ImageId, request: Request) -> Response:
        found = files.original(image_id)
        return _send(found, request) if isinstance(found, Served) else _stream(found, request)

    for path, endpoint in (
        ("/api/images/{image_id}/thumbnail", thumbnail),
        ("/api/images/{image_id}/original", original),
    ):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)  # caches and link checkers


def _add_status_and_page(app: FastAPI, library, gate: DecodeGate, upload_limit: int, token: str | None) -> None:
    """The library's and the server's status, and the web page with its static files."""

    @app.get("/api/status", summary="The library, its model and index, and the server")
    def status() -> dict:
        data = library.status().as_dict()
        data.pop("skipped_files", None)
        serving = library.indexes.serving  # the Ray actors that search the image index, if any
        data["engine"] = serving.describe() if serving is not None else {"engine": "local"}
        encoder = library.loaded_encoder
        data["server"] = {
            "version": cbir.__version__,
            "upload_limit_bytes": upload_limit,
            "decode_slots": gate.slots,
            "decode_queue": gate.queue,
            "token_required": token is not None,
            "text_batches": dict(sorted(getattr(encoder, "batch_sizes", {}).items())),
        }
        return data

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _image_info(library, image_id: int):
    infos = library.catalog.images([image_id])
    if image_id not in infos:
        raise ImageGone(f"no image {image_id} in this library")
    return infos[image_id]


def _error(message: str, kind: str, status: int, headers=None) -> JSONResponse:
    """An error as one line (what a client shows); a message with more lines (a --where
    expression's caret under the problem) keeps them all in ``detail``."""
    lines = message.splitlines() or [kind]
    body = {"error": lines[0].removeprefix("--"), "type": kind}
    if len(lines) > 1:
        body["detail"] = message
    return JSONResponse(body, status, headers=headers)


def _added_text(text: str | None) -> str | None:
    """Text given with an image query is added to it (the CLI's --image a.jpg + "in winter")."""
    if text is None or text.lstrip().startswith(("+", "-")):
        return text
    return f"+ {text}"


def _hit_json(hit) -> dict:
    data = hit.as_dict()  # a search hit, or an image's details (ImageInfo)
    if "missing" not in data:  # an image's details: one stat, as for a search hit
        from cbir.library import file_gone

        data["missing"] = file_gone(Path(hit.file))
    data["thumbnail"] = f"/api/images/{hit.id}/thumbnail"
    # a PDF page's or video frame's file, opened at that page or moment (a W3C media fragment)
    data["original"] = f"/api/images/{hit.id}/original" + (f"#{hit.item}" if hit.item else "")
    return data


def _send(served: Served, request: Request) -> Response:
    headers = {
        "ETag": served.etag,
        # private: photos are personal; revalidated after a day (the ETag makes that cheap)
        "Cache-Control": "private, max-age=86400" if served.cacheable else "no-cache",
    }
    if request.headers.get("if-none-match") == served.etag:
        return Response(status_code=304, headers=headers)
    return Response(served.data, media_type=served.media_type, headers=headers)


def _stream(opened: Opened, request: Request) -> Response:
    """A whole PDF or video from its open file: the byte range asked for (206), or all of it."""
    headers = {
        "ETag": opened.etag,
        "Cache-Control": "private, max-age=86400" if opened.cacheable else "no-cache",
        "Accept-Ranges": "bytes",
    }
    if request.headers.get("if-none-match") == opened.etag:
        opened.file.close()
        return Response(status_code=304, headers=headers)
    # If-Range: the range only while the file is still the one the client has the rest of
    asked = request.headers.get("range") if request.headers.get("if-range") in (None, opened.etag) else None
    try:
        span = requested_range(asked, opened.size)
    except Unsatisfiable:
        opened.file.close()
        headers["Content-Range"] = f"bytes */{opened.size}"
        return _error(
            f"range {asked} starts past the end of the file ({opened.size:,} bytes)",
            "RangeNotSatisfiable",
            416,
            headers,
        )
    start, end = span or (0, opened.size)
    headers["Content-Length"] = str(end - start)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{opened.size}"
    status = 206 if span else 200
    if request.method == "HEAD":
        opened.file.close()
        return Response(status_code=status, headers=headers, media_type=opened.media_type)
    return StreamingResponse(chunks(opened.file, start, end), status, headers, opened.media_type)
