"""IMAGE_PROCESS: fetch each image through the guard, transcode it, store it.

The Pillow pipeline is ``handlers.transcode`` (its names are importable from
here too); this module is the job type: the payload schema, the per-image
steps within the job's deadline, media names, the callback, the items hook.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any, Callable

import marshmallow
from marshmallow import fields, validate

from ..core.context import JobContext
from ..core.errors import StoreError
from ..core.extras import require
from ..core.jobs import Job
from . import fetch as fetch_module
from .fetch import FetchError, Fetcher, check_url
from .transcode import (DEFAULT_MAX_PIXELS, ImageError, Transcoded, decode_cost, fitted_box,  # noqa: F401
                        is_heif, transcode)

log = logging.getLogger("queue_service.worker")

MAX_IMAGES = 20
SIGNATURE_HEADER = "X-Queue-Signature"
CALLBACK_MAX_RESPONSE_BYTES = 1024 * 1024


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
                     "height": None, "error": "not fetched: the job's time budget "
                                              "(QUEUE_IMAGE_JOB_TIMEOUT) ran out"}
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
