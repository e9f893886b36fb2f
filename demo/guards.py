"""The demo's boundary: uploads and public image URLs only (never a server path, never a private address),
each value checked once, and every failure a readable `gr.Error` without server folders or a stack trace."""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import mimetypes
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import gradio as gr
import gradio.context
import gradio.route_utils
import gradio.utils
import gradio_client.utils
from PIL import Image

from demo.fetch import FetchError, fetch
from wmoe import ImageError
from wmoe.preprocess import load_image

log = logging.getLogger("wmoe.app")
DEFAULT_MAX_FILE_SIZE = "50mb"  # uploads and fetched image URLs (`--max-file-size`)
NAME_SHOWN = 100  # characters of a class name the score panel shows (the result JSON keeps all of it)
SCALES = [  # the colour scales offered: (label, value)
    ("fixed 0..1 (probabilities; comparable across images)", "fixed"),
    ("stretched per image (its own min..max; NOT comparable across images)", "stretch"),
]
SCALE_VALUES = tuple(v for _, v in SCALES)


# ----------------------------------------------------------------------------- words and errors


def md(text: str) -> str:
    """User or system text made inert inside Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", html.escape(str(text), quote=False))


def public(message: str) -> str:
    """An error message without server folders: absolute paths are cut to their last part."""
    return re.sub(r"(?<![\w.:/])/(?:[^\s/:;,'\"()\[\]]+/)+([^\s/:;,'\"()\[\]]*)", r"\1", message)


def short(text: str, limit: int = NAME_SHOWN) -> str:
    """Long user text cut for display, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters in all)"


def user_error(message: str, title: str = "Cannot use this input") -> gr.Error:
    return gr.Error(message, title=title, print_exception=False)


def user_errors(fn):
    """Every failure of a handler reaches the user as a readable gr.Error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageError, ValueError) as e:
            raise user_error(html.escape(public(str(e)))) from None
        except Exception as e:
            log.exception("request failed")
            raise user_error(
                f"The model failed on this request ({type(e).__name__}); the server log has the details.",
                title="Internal error",
            ) from None

    return wrapper


# ----------------------------------------------------------------------------- values


def valid(what: str, value, options: tuple | type | None = None):
    """`value` if the page could have sent it, else a clear gr.Error: without `options` a finite number in
    [0, 1] (every slider here), else one of `options` (radios, checkboxes) or an instance of that type."""
    if options is None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        expected = "a number from 0 to 1"
    elif isinstance(options, type):
        ok, expected = isinstance(value, options), f"a {options.__name__}"
    else:
        ok = any(type(value) is type(o) and value == o for o in options)
        expected = "one of " + ", ".join(map(repr, options))
    if not ok:  # NaN fails 0 <= value
        shown = html.escape(short(repr(value), 40))
        raise user_error(f"{what} must be {expected}, not {shown}", title="Invalid value")
    return value


def checked(component, what: str, options: tuple | type | None = None):
    """An input whose value is checked (`valid`) before gradio's own preprocess, which lets NaN through and
    answers a string for a number with an error that has no message. The handlers check again (`valid`)
    for callers that bypass the page (a ZeroGPU worker, another front end, the tests)."""
    preprocess = component.preprocess
    component.preprocess = lambda payload: preprocess(valid(what, payload, options))
    return component


def display_settings(threshold, opacity, scale):
    """The display settings every view shares, checked (for handlers called in-process)."""
    valid("the threshold", threshold)
    valid("the opacity", opacity)
    valid("the colour scale", scale, SCALE_VALUES)


# ----------------------------------------------------------------------------- uploads


def uploads_only(component):
    """A file input that takes only files uploaded to this server (`uploaded_path`) and public image URLs
    (`fetched`). gradio checks a file value against its upload folder only when the value is marked as a
    file (`meta`): an unmarked `{"path": ...}` reaches the component as is, and PIL would open any image on
    the server. gradio's own download of a URL has no size limit, so it is never used."""
    preprocess, move = component.preprocess, component.async_move_resource_to_block_cache

    def only_uploads(payload):
        files = getattr(payload, "root", payload)
        for f in files if isinstance(files, list) else [files]:
            if f is not None:
                f.path = uploaded_path(f.path)
        return preprocess(payload)

    async def fetch_safely(path):
        if path is not None and gradio_client.utils.is_http_url_like(str(path)):
            url = str(path)
            path = uploaded_path(url) if own_upload(url) else await asyncio.to_thread(fetched, url)
        return await move(path)

    component.preprocess, component.async_move_resource_to_block_cache = only_uploads, fetch_safely
    return component


def uploaded_path(value) -> str:
    """The local path of a file uploaded to this server, given as its path or as its own `/gradio_api/file=`
    URL (what an MCP client gets back from uploading); anything else is refused, never read."""
    path = str(value)
    if gradio_client.utils.is_http_url_like(path):
        path = own_upload(path)
        if not path:
            raise user_error(
                "An image URL is fetched only when it is sent as a file (gradio_client: handle_file)."
            )
    if not gradio.utils.is_in_or_equal(gradio.utils.abspath(path), gradio.utils.get_upload_folder()):
        raise user_error("Only uploaded files are accepted, not a path on the server: upload the file.")
    return path


def own_upload(url: str) -> str | None:
    """The path named by a `/gradio_api/file=` URL (read locally, never fetched, whatever its host), or
    None for any other URL."""
    _, _, path = unquote(urlsplit(url).path).partition(f"{gradio.route_utils.API_PREFIX}/file=")
    return path or None


def readable_upload_errors(preprocess):
    """gradio opens the upload (PIL) before any handler runs; a file it cannot open would reach the user
    as a bare "Error", so it becomes a gr.Error that names the file and gives wmoe's own reason (empty,
    not an image, too many pixels...), as the Python API and the CLI do. (Wrapped per instance: a gr.Image
    subclass would make gradio write a .pyi stub beside this file.)"""

    def wrapper(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as e:
            name = getattr(payload, "orig_name", None) or "the upload"
            raise user_error(html.escape(f"{name}: {unreadable(getattr(payload, 'path', None))}")) from e

    return wrapper


def upload_image(value) -> Image.Image:
    """The one input source: an upload (its path on this server, already vetted by `uploads_only`; a public
    image URL arrives here as the file `fetched` saved) decoded once by wmoe's loader into an RGB image;
    errors name the file, not the server folder."""
    if not value:
        raise user_error("Upload, paste or capture an image first.", title="No image")
    return read_upload(value)


def fetched(url: str) -> str:
    """A public image URL downloaded into the upload folder (`demo.fetch`: no private address, at most the
    launched app's upload size limit), named after the URL with the extension of its declared type (file
    inputs check it); a refusal is the caller's error, with its reason and no server detail."""
    blocks = gradio.context.LocalContext.blocks.get(None)
    limit = getattr(blocks, "max_file_size", None) or gradio.utils._parse_file_size(DEFAULT_MAX_FILE_SIZE)
    try:
        image = fetch(url, limit)
    except FetchError as e:
        raise user_error(html.escape(f"The image URL was not fetched: {e}.")) from None
    stem = re.sub(r"[^\w-]+", "_", Path(unquote(urlsplit(url).path)).stem)[-60:] or "image"
    suffix = mimetypes.guess_extension(image.content_type) or ""
    path = Path(tempfile.mkdtemp(prefix="url-", dir=gradio.utils.get_upload_folder())) / (stem + suffix)
    path.write_bytes(image.body)
    return str(path)


def read_upload(path: str) -> Image.Image:
    """An uploaded file through wmoe's own loader; errors name the file, not the server folder."""
    try:
        return load_image(path)
    except ImageError as e:
        raise ImageError(str(e).replace(str(path), Path(path).name)) from None


def unreadable(path: str | None) -> str:
    """Why an upload gradio could not open is no usable image, in wmoe's words (as the API and CLI say it)."""
    if path:
        try:
            read_upload(path)
        except ImageError as e:
            return without_name(str(e), Path(path).name)
    return "not an image that can be read (PNG, JPEG, TIFF, BMP, GIF, WebP...)"


def without_name(message: str, name: str) -> str:
    """An ImageError message minus its leading file name (shown beside it anyway)."""
    message = public(message)
    return message[len(name) + 2 :] if message.startswith(f"{name}: ") else message


def safe_stem(name: str) -> str:
    """A file name's stem usable in download names."""
    return re.sub(r"[^\w.-]+", "_", Path(name).stem)[:60] or "image"
