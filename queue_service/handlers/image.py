"""IMAGE_PROCESS: fetch each image through the guard, transcode it, store it.

``transcode()`` is the whole Pillow pipeline and is usable on its own (the
benchmarks time it against plain Pillow). Pillow is imported inside the
functions that use it: it costs about 3 MB resident, which a web process
that never runs an image job should not pay.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import secrets
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import marshmallow
from marshmallow import fields, validate

from ..core.context import JobContext
from ..core.errors import StoreError
from ..core.extras import require
from ..core.jobs import Job
from . import fetch as fetch_module
from .fetch import FetchError, Fetcher, check_url

if TYPE_CHECKING:
    from PIL import Image as PILImage

log = logging.getLogger("queue_service.worker")

#: Decoders we open; anything else is refused before decoding. HEIC (what
#: iPhones write) is opened by pillow-heif, loaded on the first HEIC seen.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
#: ISO BMFF major brands of HEVC-coded HEIF stills, read at bytes 8..12.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
MAX_IMAGES = 20
SIGNATURE_HEADER = "X-Queue-Signature"
CALLBACK_MAX_RESPONSE_BYTES = 1024 * 1024
OUTPUT_FORMATS = {"webp": ("WEBP", "image/webp", "webp"), "jpeg": ("JPEG", "image/jpeg", "jpg")}
_ORIENTATION_TAG = 0x0112
#: EXIF orientation -> the PIL.Image.Transpose that makes the picture upright.
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
              6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


class ImageError(ValueError):
    """The bytes are not an image we accept (unknown format, broken, too big)."""


@dataclass(frozen=True)
class Transcoded:
    data: bytes
    width: int
    height: int
    content_type: str
    extension: str
    bytes_before: int

    @property
    def bytes_after(self) -> int:
        return len(self.data)


def fitted_box(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size ``width``x``height`` scales to so that neither side exceeds
    ``max_side`` (never upscaled). 4000x3000 into 1600 gives (1600, 1200)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


def _heif_formats() -> tuple[str, ...]:
    """Register pillow-heif's opener (once; its libraries stay out of the
    process until a HEIC arrives) and name it for Image.open."""
    try:
        import pillow_heif
    except ImportError:  # an optional dependency for hosts that install only Pillow
        raise ImageError("HEIC image, but pillow-heif is not installed") from None
    pillow_heif.register_heif_opener()  # idempotent
    return ("HEIF",)


def _open(data: bytes) -> "PILImage.Image":
    from PIL import Image, UnidentifiedImageError

    formats = _heif_formats() if is_heif(data) else ALLOWED_FORMATS
    try:
        # The bomb check runs inside Image.open from the header alone; above
        # MAX_IMAGE_PIXELS it only warns, so the warning is made an error here
        # (the limit itself is never lifted).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"not a supported image (allowed: {', '.join(ALLOWED_FORMATS)}, HEIC)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"unreadable image: {exc}") from None
    # catch_warnings is process-wide state, so another thread could have
    # restored the filters mid-open: check the limit ourselves as well.
    if image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise ImageError(f"image too large to decode safely: {image.width}x{image.height} pixels")
    return image


def _has_alpha(image: "PILImage.Image") -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data


def _to_output_mode(image: "PILImage.Image", keep_alpha: bool) -> "PILImage.Image":
    from PIL import Image

    if _has_alpha(image):
        rgba = image.convert("RGBA")
        if keep_alpha:
            return rgba
        # JPEG has no alpha: flatten onto white, as a browser shows it.
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


#: Bytes per pixel of Pillow's decoded bands: RGB is stored in 4 bytes too.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
#: 35 M pixels of 4 bytes: a 140 MB estimated peak (decode_cost), so one
#: image job stays under ~150 MB above the idle worker. That lets through
#: ~26 MP of RGB PNG, ~14 MP of RGBA, ~140 MP of grayscale (Pillow's bomb
#: limit refuses it first), and baseline JPEGs up to the bomb limit (they
#: draft-decode at 1/2..1/8 scale).
DEFAULT_MAX_PIXELS = 35_000_000


def decode_cost(image: "PILImage.Image", full_size: tuple[int, int], max_side: int) -> int:
    """Estimated peak bytes of transcoding ``image`` (after any JPEG draft),
    the sum of what Pillow and libjpeg hold at once (it matched ru_maxrss
    within a few MB, tests/test_image_budget.py):

    - the decoded bands (RGB is stored in 4 bytes a pixel, like RGBA);
    - resizing with alpha: Pillow premultiplies into a full-size copy first;
    - the resize's intermediate pass: the new width by the old height;
    - a progressive JPEG: libjpeg buffers every DCT coefficient of the
      full-size image (2 bytes a sample, whatever the draft scale)."""
    width, height = image.size
    band_bytes = _MODE_BYTES.get(image.mode, 4)
    cost = width * height * band_bytes
    if width > max_side or height > max_side:
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            cost += width * height * 4
        cost += fitted_box(width, height, max_side)[0] * height * max(band_bytes, 1)
    if image.format == "JPEG" and (image.info.get("progressive") or image.info.get("progression")):
        cost += full_size[0] * full_size[1] * 2 * max(1, len(image.getbands()))
    return cost


def transcode(data: bytes, *, max_side: int = 1600, fmt: str = "webp", quality: int = 80,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Transcoded:
    """Decode ``data`` (JPEG, PNG, WebP, GIF's first frame or HEIC), apply the EXIF
    orientation, fit it within ``max_side`` and encode it as ``fmt`` ("webp"
    or "jpeg") at ``quality`` with EXIF, GPS and XMP dropped (the ICC colour
    profile is kept: it is colour, not metadata). ``max_pixels`` is the
    memory budget in RGBA pixels (4 bytes each): an image whose decoding
    would take more (``decode_cost``) is refused from its header. Raises
    ImageError."""
    from PIL import Image

    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(OUTPUT_FORMATS)}, got {fmt!r}")
    if max_side < 1 or not 1 <= quality <= 100:
        raise ValueError("max_side must be >= 1 and quality 1..100")
    pil_format, content_type, extension = OUTPUT_FORMATS[fmt]
    options: dict = {"quality": quality}
    if pil_format == "WEBP":
        options["method"] = 4
    else:
        options.update(optimize=True, progressive=True)
    out = io.BytesIO()
    with _open(data) as image:
        try:
            if image.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale. draft() keeps both
                # sides >= the box, so the box must be the fitted size, not a
                # square: (1600, 1200) for 4000x3000, which halves time and memory.
                full_size = image.size
                image.draft("RGB", fitted_box(image.width, image.height, max_side))
            else:
                full_size = image.size
            cost = decode_cost(image, full_size, max_side)
            if cost > max_pixels * 4:
                raise ImageError(f"image too large for the memory budget: {full_size[0]}x{full_size[1]} "
                                 f"{image.format} {image.mode} would take ~{cost // 2**20} MB to decode "
                                 f"(QUEUE_IMAGE_MAX_PIXELS={max_pixels} allows {max_pixels * 4 // 2**20} MB)")
            if image.format == "GIF":
                image.seek(0)
            icc_profile = image.info.get("icc_profile")
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            if image.width > max_side or image.height > max_side:
                # In place, before the rotation: fitting into a square box is
                # the same either way round, and rotating the small image
                # costs a fraction of rotating (copying) the decoded one.
                # BICUBIC, Pillow's default here: after draft() the remaining
                # step is under 2x, where LANCZOS was ~10% slower and ~25%
                # larger on a noisy 12 MP photo for no visible gain.
                image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            else:
                image.load()  # decode here, inside the try: a truncated file is an ImageError
            result = image
            if orientation in _TRANSPOSE:
                result = image.transpose(Image.Transpose[_TRANSPOSE[orientation]])
            result = _to_output_mode(result, keep_alpha=pil_format == "WEBP")
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
            raise ImageError(f"unreadable image: {exc}") from None
        except Image.DecompressionBombError as exc:  # a frame larger than its header said
            raise ImageError(f"image too large to decode safely: {exc}") from None
        # Pillow writes EXIF/XMP only when passed to save(); we pass neither.
        if icc_profile:
            options["icc_profile"] = icc_profile
        result.save(out, pil_format, **options)
        width, height = result.size
        result.close()
    return Transcoded(out.getvalue(), width, height, content_type, extension, len(data))


# -- the IMAGE_PROCESS job type ---------------------------------------------
def _validate_url(value: str) -> None:
    try:
        check_url(value)
    except FetchError as exc:
        raise marshmallow.ValidationError(str(exc)) from None


def _validate_item_id(value: str) -> None:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise marshmallow.ValidationError("Must not contain control characters.")


class ImageProcessSchema(marshmallow.Schema):
    itemId = fields.String(required=True, validate=[validate.Length(1, 200), _validate_item_id])
    imageUrls = fields.List(fields.String(validate=_validate_url), required=True,
                            validate=validate.Length(1, MAX_IMAGES))
    callbackUrl = fields.String(validate=_validate_url, allow_none=True)

    @marshmallow.pre_dump
    def _pillow_installed(self, data: Any, **kwargs: Any) -> Any:
        """Without the ``images`` extra, refuse the job at enqueue with one line.
        add_job dumps the loaded payload before anything is written, and the
        worker only loads: a job stored by a process that has Pillow is left
        to the handler (which retries, so a process with Pillow can take it)."""
        require("images", "IMAGE_PROCESS")
        return data


class AllImagesFailed(Exception):
    """Every image failed for a reason that may pass (timeout, 5xx): retry the job."""


def _kb(size: int) -> str:
    return f"{round(size / 1024)}KB"


def _saving(before: int, after: int) -> str:
    if before <= 0:
        return "n/a"
    change = (1 - after / before) * 100
    return f"{change:.1f}% smaller" if change >= 0 else f"{-change:.1f}% larger"


_PROCESS_SECRET = secrets.token_bytes(32)


def _media_key(job: JobContext) -> bytes:
    """The HMAC key for media names: QUEUE_MEDIA_SECRET, else the host's
    SECRET_KEY, else a random key for this process (then a re-run in another
    process stores new files; the old ones go with the file purge)."""
    secret = getattr(job.settings, "media_secret", None) or getattr(job.app, "secret_key", None)
    if not secret:
        return _PROCESS_SECRET
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def media_name(job: JobContext, index: int) -> str:
    """A name that reveals nothing (not the job id: job ids are not public)
    but is the same for the same job and position, so a re-run overwrites
    its files instead of piling up new ones."""
    digest = hmac.new(_media_key(job), f"media:{job.id}:{index}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def _process_one(fetcher: Any, job: JobContext, settings: Any, index: int, url: str) -> tuple[dict[str, Any], bool]:
    """One image: fetch, transcode, store. Returns (result entry, transient failure?)."""
    entry: dict[str, Any] = {"source": url, "url": url, "bytesBefore": None, "bytesAfter": None,
                             "width": None, "height": None, "error": None}
    try:
        fetched = fetcher.get(url)
        entry["bytesBefore"] = len(fetched.content)
        out = transcode(fetched.content, max_side=settings.image_max_side, fmt=settings.image_format,
                        quality=settings.image_quality, max_pixels=settings.image_max_pixels)
        del fetched  # the source bytes can go before the store write
        name = f"{media_name(job, index)}.{out.extension}"
        job.put_file(name, out.data, out.content_type)
    except (FetchError, ImageError) as exc:
        entry["error"] = str(exc)
        log.warning("[Worker] ❌ Failed to process image %d: %s", index, exc)
        return entry, getattr(exc, "transient", False)
    entry.update(url=f"{settings.url_prefix}/media/{name}", bytesAfter=out.bytes_after,
                 width=out.width, height=out.height)
    log.info("[Worker] ✅ Image %d: %s → %s (%s)", index, _kb(out.bytes_before), _kb(out.bytes_after),
             _saving(out.bytes_before, out.bytes_after))
    return entry, False


def items_hook(get_db: Callable[[], Any], collection: str = "items") -> Callable[[Job], None]:
    """An ``on_complete`` hook for IMAGE_PROCESS that points the host app's
    ``items`` document (``_id`` = itemId, as an ObjectId or a string) at the new
    URLs. ``get_db`` returns the pymongo Database (called when a job completes,
    so no client is touched before fork)::

        queue.on_complete("IMAGE_PROCESS")(items_hook(lambda: mongo.db))

    Runs in the worker's process after the job is recorded as completed; a
    failure is logged and never changes the job's outcome."""
    def update_item(job: Job) -> None:
        from bson import ObjectId  # ships with pymongo: only MongoDB hosts register this hook
        from pymongo.errors import PyMongoError

        result = job.result or {}
        item_id = result.get("itemId")
        if not item_id:
            return
        urls = [image["url"] for image in result.get("images", [])]
        ids: list[Any] = [ObjectId(item_id), item_id] if ObjectId.is_valid(item_id) else [item_id]
        try:
            outcome = get_db()[collection].update_one(
                {"_id": {"$in": ids}}, {"$set": {"imageUrls": urls, "imagesProcessedAt": job.completed_at}})
        except PyMongoError as exc:
            raise StoreError(f"MongoDB: updating {collection} {item_id} failed: {exc}") from exc
        if outcome.matched_count == 0:
            log.warning("[Worker] Item %s not found in %s; its URLs were not updated", item_id, collection)
    return update_item


def _send_callback(url: str, body: dict[str, Any], secret: str | None, allow_private: bool) -> dict[str, Any]:
    """POST the result once. A failure is recorded, never raised: the images
    are done and must not be processed again because a webhook is down."""
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "X-Queue-Job-Id": body["jobId"]}
    if secret:
        digest = hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()
        headers[SIGNATURE_HEADER] = f"sha256={digest}"
    try:
        response = Fetcher(allow_private=allow_private, max_bytes=CALLBACK_MAX_RESPONSE_BYTES).post(
            url, data, headers=headers)
    except FetchError as exc:
        log.warning("[Worker] ❌ Callback to %s failed: %s", url, exc)
        return {"url": url, "delivered": False, "status": getattr(exc, "status", None), "error": str(exc)}
    log.info("[Worker] Callback delivered to %s (HTTP %d)", url, response.status)
    return {"url": url, "delivered": True, "status": response.status, "error": None}


def process_images(payload: dict[str, Any], job: JobContext) -> dict[str, Any]:
    """The IMAGE_PROCESS handler."""
    require("images", "IMAGE_PROCESS")  # a ConfigurationError here is retried, not a loop error
    settings = job.settings
    urls: list[str] = payload["imageUrls"]
    total = len(urls)
    images: list[dict[str, Any]] = []
    transient_failures = 0
    for index, url in enumerate(urls, 1):
        if not job.progress(done=index - 1, total=total):
            raise RuntimeError("lost the claim on this job; another worker has it")
        log.info("[Worker] Processing image %d/%d", index, total)
        remaining = job.remaining_seconds()
        if remaining is not None and remaining <= 0:
            entry = {"source": url, "url": url, "bytesBefore": None, "bytesAfter": None, "width": None,
                     "height": None, "error": f"not fetched: the job's time budget "
                                              f"(QUEUE_IMAGE_JOB_TIMEOUT) ran out"}
            log.warning("[Worker] ❌ Image %d not fetched: the job's time budget ran out", index)
            images.append(entry)
            continue
        # Each fetch's own deadline (and so its read timeouts) ends with the job's.
        fetcher = Fetcher(allow_private=settings.allow_private_urls,
                          deadline=None if remaining is None else min(remaining, fetch_module.DEADLINE_SECONDS))
        entry, transient = _process_one(fetcher, job, settings, index, url)
        images.append(entry)
        transient_failures += transient
    failed = sum(1 for image in images if image["error"])
    job.progress(done=total, total=total, failed=failed)
    # Nothing was stored, so a retry costs only the fetches; on the last
    # attempt the job completes instead, so the result and callback say why.
    if transient_failures == total and job.retry_count < job.max_retries:
        raise AllImagesFailed(f"all {total} image(s) failed for a transient reason; "
                              f"first: {images[0]['error']}")
    status = "completed" if failed == 0 else ("failed" if failed == total else "partial")
    result: dict[str, Any] = {"itemId": payload["itemId"], "status": status, "images": images,
                              "processed": total - failed, "failed": failed, "callback": None}
    if payload.get("callbackUrl"):
        body = {"jobId": job.id, "itemId": payload["itemId"], "status": status, "images": images}
        result["callback"] = _send_callback(payload["callbackUrl"], body, settings.callback_secret,
                                            settings.allow_private_urls)
    return result
