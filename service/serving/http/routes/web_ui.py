"""The web page at ``/`` (``http/static/``, shipped in the package): pick a model, upload or
record audio, see the /classify and /compress answers drawn in the browser. The page and its
files are public (``security.PUBLIC_PATHS``, ``STATIC_PREFIX``); the API calls it makes send
the key. ``GET /ui/features`` (keyed like any API path) tells it which optional endpoints
this server has (``stream``: WS /stream, for the live-mode panel)."""

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import FileResponse
from starlette.routing import WebSocketRoute
from starlette.staticfiles import StaticFiles

from service.serving.http.responses import OrjsonResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX = "/static"
STREAM_PATH = "/stream"

router = APIRouter(tags=["web page"])


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


def _routes(routes, depth: int = 0):
    """Every route, included routers' routes too (FastAPI may keep those nested)."""
    for r in routes:
        yield r
        inner = getattr(r, "original_router", None) or getattr(r, "router", None)
        nested = getattr(r, "routes", None) or getattr(inner, "routes", None)
        if nested and depth < 8:
            yield from _routes(nested, depth + 1)


def has_websocket(routes, path: str) -> bool:
    return any(getattr(r, "path", None) == path and
               (isinstance(r, WebSocketRoute) or "websocket" in type(r).__name__.lower())
               for r in _routes(routes))


@router.get("/ui/features", summary="Optional endpoints the web page may use")
async def features(request: Request) -> OrjsonResponse:
    return OrjsonResponse({"stream": has_websocket(request.app.routes, STREAM_PATH)})


def install(app: FastAPI) -> None:
    """The page's routes and its static files."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
