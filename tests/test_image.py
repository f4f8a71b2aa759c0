"""IMAGE_PROCESS and transcode(): real images made with Pillow here, served
by a real HTTP server on 127.0.0.1, run by a real worker on both stores."""
from __future__ import annotations

import hashlib
import hmac
import io
import re
import json
import logging
import struct
import subprocess
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from queue_service import JobQueue, ManualClock
from queue_service.core.errors import ValidationError
from queue_service.handlers.image import ImageError, fitted_box, transcode
from servers import http_server  # noqa: F401  (fixture)
from test_fetch import PUBLIC_HOST, network  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent


# -- images, made here ---------------------------------------------------------
def jpeg_bytes(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def exif_gps_jpeg() -> bytes:
    """400x300, left half red, right half blue; EXIF orientation 6 (shown
    rotated 90 degrees clockwise: 300x400, red on top) and GPS tags."""
    image = Image.new("RGB", (400, 300), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 200, 300))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "TestCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 30.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 10.0)
    return jpeg_bytes(image, exif=exif, quality=95)


def photo(size: tuple[int, int]) -> Image.Image:
    """Photo-like content (a fractal with gradients), so sizes are realistic."""
    return Image.effect_mandelbrot(size, (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")


def progressive_jpeg() -> bytes:
    return jpeg_bytes(photo((800, 600)), progressive=True, quality=90)


def big_jpeg() -> bytes:
    return jpeg_bytes(photo((4000, 3000)), quality=90)


def png_alpha() -> bytes:
    image = Image.new("RGBA", (500, 400), (0, 128, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 250, 400))  # left half fully transparent
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def gif_two_frames() -> bytes:
    first = Image.new("P", (120, 80), 1)
    first.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    second = Image.new("P", (120, 80), 2)
    second.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    out = io.BytesIO()
    first.save(out, "GIF", save_all=True, append_images=[second], duration=100)
    return out.getvalue()


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A few-hundred-byte PNG whose header declares width x height pixels."""
    raw = zlib.compress(b"\0" * 1024)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- transcode(), alone -------------------------------------------------------
def test_fitted_box_is_the_scaled_size_not_a_square():
    assert fitted_box(4000, 3000, 1600) == (1600, 1200)
    assert fitted_box(3000, 4000, 1600) == (1200, 1600)
    assert fitted_box(800, 600, 1600) == (800, 600)  # never upscaled


def test_exif_orientation_applied_and_metadata_stripped():
    source = exif_gps_jpeg()
    assert decode(source).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the source really has GPS
    out = transcode(source)
    image = decode(out.data)
    assert (image.format, out.content_type) == ("WEBP", "image/webp")
    assert (out.width, out.height) == image.size == (300, 400)  # upright
    top, bottom = image.convert("RGB").getpixel((150, 50)), image.convert("RGB").getpixel((150, 350))
    assert top[0] > 200 and top[2] < 60  # red on top, as the camera meant
    assert bottom[2] > 200 and bottom[0] < 60
    assert "exif" not in image.info and "xmp" not in image.info
    assert len(image.getexif()) == 0
    assert b"TestCam" not in out.data and b"GPS" not in out.data
    assert out.bytes_before == len(source)


QUADRANTS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))  # TL, TR, BL, BR


def quadrant_colours(image: Image.Image) -> list[tuple[int, int, int]]:
    """The nearest of QUADRANTS at the centre of each quarter, TL TR BL BR."""
    rgb, (w, h) = image.convert("RGB"), image.size
    points = [(w // 4, h // 4), (3 * w // 4, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)]
    nearest = lambda px: min(QUADRANTS, key=lambda c: sum((a - b) ** 2 for a, b in zip(px, c)))  # noqa: E731
    return [nearest(rgb.getpixel(p)) for p in points]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("max_side", [1600, 40])  # as it is, and shrunk (rotated after the resize)
def test_every_exif_orientation_comes_out_as_pillow_shows_it(orientation, max_side):
    from PIL import ImageOps

    image = Image.new("RGB", (120, 80))
    for colour, box in zip(QUADRANTS, [(0, 0, 60, 40), (60, 0, 120, 40), (0, 40, 60, 80), (60, 40, 120, 80)]):
        image.paste(colour, box)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    source = jpeg_bytes(image, exif=exif, quality=95)
    expected = ImageOps.exif_transpose(decode(source))
    out = decode(transcode(source, max_side=max_side, fmt="jpeg", quality=95).data)
    want_size = fitted_box(*expected.size, max_side)
    assert out.size == want_size
    assert quadrant_colours(out) == quadrant_colours(expected)


CAMERA_JPEGS = sorted((ROOT / "tests" / "data" / "camera").glob("*.jpg"))
CAMERA_MAKES = (b"Canon", b"CASIO", b"OLYMPUS", b"Panasonic", b"PENTAX", b"SIGMA", b"SONY")


@pytest.mark.parametrize("path", CAMERA_JPEGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_real_camera_exif_is_stripped(path, fmt):
    source = path.read_bytes()
    original = decode(source)
    make = original.getexif().get(ExifTags.Base.Make, "").strip().encode()
    assert make and make in source  # the camera's own EXIF is really there
    out = transcode(source, max_side=200, fmt=fmt)
    image = decode(out.data)
    assert image.size == fitted_box(*original.size, 200) == (out.width, out.height)
    assert len(image.getexif()) == 0 and "exif" not in image.info and "xmp" not in image.info
    assert not [m for m in CAMERA_MAKES if m in out.data]
    assert b"GPS" not in out.data and b"Exif" not in out.data


def test_camera_jpegs_are_here():
    assert len(CAMERA_JPEGS) >= 8


def heic_bytes(size: tuple[int, int] = (2000, 1500)) -> bytes:
    """A real HEIC (HEVC-coded, as iPhones write), made with pillow-heif's
    encoder, carrying a camera make and GPS in its EXIF."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Apple"
    exif[ExifTags.Base.Model] = "TestPhone 15"
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] = "N"
    out = io.BytesIO()
    photo(size).save(out, "HEIF", exif=exif, quality=85)
    return out.getvalue()


def test_heic_is_decoded_fitted_and_stripped():
    source = heic_bytes()
    assert source[4:12] == b"ftypheic" and b"TestPhone" in source
    for fmt, content_type in (("webp", "image/webp"), ("jpeg", "image/jpeg")):
        out = transcode(source, fmt=fmt)
        image = decode(out.data)
        assert (out.width, out.height) == image.size == (1600, 1200)
        assert out.content_type == content_type
        assert len(image.getexif()) == 0
        assert b"TestPhone" not in out.data and b"Apple" not in out.data


def test_heic_without_pillow_heif_is_an_image_error(monkeypatch):
    source = heic_bytes((64, 48))
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as if not installed
    with pytest.raises(ImageError, match="pillow-heif is not installed"):
        transcode(source)


def test_heic_sniffing_does_not_open_other_formats_as_heif():
    from queue_service.handlers.image import is_heif

    assert is_heif(heic_bytes((64, 48)))
    assert not is_heif(jpeg_bytes(photo((64, 48))))
    assert not is_heif(b"\x00\x00\x00\x18ftypisom")  # an MP4 video
    with pytest.raises(ImageError):
        transcode(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)  # a HEIC header and nothing else


def test_large_jpeg_fits_within_max_side():
    out = transcode(big_jpeg())
    assert (out.width, out.height) == (1600, 1200)
    assert decode(out.data).size == (1600, 1200)
    assert out.bytes_after < out.bytes_before


def test_progressive_jpeg_is_read():
    out = transcode(progressive_jpeg())
    assert (out.width, out.height) == (800, 600)


def test_png_alpha_is_kept_in_webp():
    image = decode(transcode(png_alpha()).data)
    assert image.mode == "RGBA"
    assert image.getpixel((10, 10))[3] == 0 and image.getpixel((400, 10))[3] == 255


def test_png_alpha_is_flattened_on_white_in_jpeg():
    out = transcode(png_alpha(), fmt="jpeg", quality=85)
    image = decode(out.data)
    assert (image.format, image.mode, out.content_type, out.extension) == ("JPEG", "RGB", "image/jpeg", "jpg")
    assert min(image.getpixel((10, 10))) > 240  # transparent became white


def test_gif_first_frame():
    out = transcode(gif_two_frames())
    image = decode(out.data).convert("RGB")
    assert (out.width, out.height) == (120, 80)
    red, green, _ = image.getpixel((60, 40))
    assert red > 200 and green < 60  # frame 1 (red), not frame 2 (green)


def test_small_image_is_not_upscaled_and_max_side_applies():
    out = transcode(progressive_jpeg(), max_side=200)
    assert (out.width, out.height) == (200, 150)


@pytest.mark.parametrize("data, message", [
    (b"hello, I am text pretending to be a JPEG", "not a supported image"),
    (b"", "not a supported image"),
    (b"BM" + b"\0" * 100, "not a supported image"),  # BMP is not on the allow-list
])
def test_non_images_are_refused(data, message):
    with pytest.raises(ImageError, match=message):
        transcode(data)


def test_truncated_jpeg_is_an_image_error():
    data = big_jpeg()
    with pytest.raises(ImageError, match="unreadable"):
        transcode(data[: len(data) // 3])


def test_bmp_is_refused_by_the_allow_list():
    out = io.BytesIO()
    Image.new("RGB", (10, 10)).save(out, "BMP")
    with pytest.raises(ImageError, match="not a supported image"):
        transcode(out.getvalue())


@pytest.mark.parametrize("size", [(40_000, 40_000), (10_000, 10_000)])  # error zone, then warning zone
def test_decompression_bomb_is_refused(size):
    bomb = png_bomb(*size)
    assert len(bomb) < 2000
    with pytest.raises(ImageError, match="too large"):
        transcode(bomb)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the limit is never lifted


def test_decompression_bomb_costs_no_memory():
    # Peak RSS of a fresh interpreter that only tries the bomb: decoding
    # 40000x40000 RGB would need 4.8 GB.
    code = (
        "import resource\n"
        "from queue_service.handlers.image import transcode, ImageError\n"
        "from test_image import png_bomb\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    transcode(png_bomb())\nexcept ImageError:\n    pass\n"
        "print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT), env={"PYTHONPATH": str(ROOT / "tests")})
    assert done.returncode == 0, done.stderr
    base_kib, peak_kib = map(int, done.stdout.split())
    assert peak_kib - base_kib < 20 * 1024


def test_bad_arguments():
    with pytest.raises(ValueError):
        transcode(progressive_jpeg(), fmt="avif")
    with pytest.raises(ValueError):
        transcode(progressive_jpeg(), quality=0)


# -- the job, end to end ------------------------------------------------------
def run_job(app, queue, payload, **options):
    state = app.extensions["queue_service"]
    job_id = queue.add_job("IMAGE_PROCESS", payload, app=app, **options)
    assert state.runtime.make_worker().run_once() is not None
    return job_id, queue.get_job_status(job_id, app=app)


def media_name(url: str) -> str:
    assert url.startswith("/api/queue/media/")
    return url.rsplit("/", 1)[1]


def test_images_processed_stored_and_servable(make_app, http_server):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    urls = [http_server.add("/exif.jpg", exif_gps_jpeg(), content_type="image/jpeg"),
            http_server.add("/big.jpg", big_jpeg(), content_type="image/jpeg"),
            http_server.add("/alpha.png", png_alpha(), content_type="image/png"),
            http_server.add("/anim.gif", gif_two_frames(), content_type="image/gif"),
            http_server.add("/prog.jpg", progressive_jpeg(), content_type="image/jpeg")]
    job_id, job = run_job(app, queue, {"itemId": "item-1", "imageUrls": urls})
    assert job["status"] == "completed", job["error"]
    result = job["result"]
    assert (result["status"], result["processed"], result["failed"]) == ("completed", 5, 0)
    assert job["progress"] == {"done": 5, "total": 5, "failed": 0}
    sizes = [(image["width"], image["height"]) for image in result["images"]]
    assert sizes == [(300, 400), (1600, 1200), (500, 400), (120, 80), (800, 600)]
    store = app.extensions["queue_service"].runtime.store
    for index, image in enumerate(result["images"], 1):
        assert image["source"] == urls[index - 1] and image["error"] is None
        assert job_id not in image["url"] and re.fullmatch(r"[A-Za-z0-9_-]{24}\.webp", media_name(image["url"]))
        stored = store.get_file(media_name(image["url"]))
        assert stored.content_type == "image/webp" and len(stored.data) == image["bytesAfter"]
        assert decode(stored.data).size == (image["width"], image["height"])
    assert result["images"][1]["bytesAfter"] < result["images"][1]["bytesBefore"] / 5
    # Served at the URL the result gives (GET {prefix}/media/<name>).
    response = app.test_client().get(result["images"][0]["url"])
    assert response.status_code == 200 and response.mimetype == "image/webp"
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response.headers["ETag"]
    assert len(decode(response.get_data()).getexif()) == 0


def test_failed_images_keep_their_url_and_the_job_completes(make_app, http_server, monkeypatch):
    monkeypatch.setattr("queue_service.handlers.fetch.DEADLINE_SECONDS", 0.3)
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    good = http_server.add("/good.jpg", progressive_jpeg(), content_type="image/jpeg")
    truncated = big_jpeg()
    bad = {
        "truncated": http_server.add("/trunc.jpg", truncated[: len(truncated) // 3]),
        "text": http_server.add("/text.jpg", b"<html>not an image</html>", content_type="image/jpeg"),
        "missing": http_server.url("/missing.jpg"),
        "huge": http_server.stream("/huge.jpg", 25 * 1024 * 1024, declare_length=False),
        "slow": http_server.trickle("/slow.jpg", total_bytes=5000, interval=0.02),
        "bomb": http_server.add("/bomb.png", png_bomb(), content_type="image/png"),
    }
    job_id, job = run_job(app, queue, {"itemId": "x", "imageUrls": [good, *bad.values()]})
    assert job["status"] == "completed" and job["retryCount"] == 0
    images = job["result"]["images"]
    assert images[0]["error"] is None and images[0]["url"].endswith(".webp")
    errors = {name: image["error"] for name, image in zip(bad, images[1:])}
    for image, url in zip(images[1:], bad.values()):
        assert image["url"] == image["source"] == url  # the original URL is kept
        assert image["bytesAfter"] is None
    assert "unreadable" in errors["truncated"]
    assert "not a supported image" in errors["text"]
    assert "HTTP 404" in errors["missing"]
    assert "cap" in errors["huge"]
    assert "deadline" in errors["slow"]
    assert "too large" in errors["bomb"]
    assert (job["result"]["status"], job["result"]["failed"]) == ("partial", 6)
    assert job["progress"] == {"done": 7, "total": 7, "failed": 6}


def test_every_image_failing_transiently_retries_the_job(make_app, http_server, clock):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    state = app.extensions["queue_service"]
    urls = [http_server.add("/a.jpg", b"busy", status=503), http_server.add("/b.jpg", b"busy", status=502)]
    job_id, job = run_job(app, queue, {"itemId": "x", "imageUrls": urls})
    assert job["status"] == "pending" and job["retryCount"] == 1
    assert "transient" in job["attempts"][0]["error"]
    http_server.add("/a.jpg", progressive_jpeg(), content_type="image/jpeg")
    http_server.add("/b.jpg", png_alpha(), content_type="image/png")
    assert state.runtime.make_worker().run_once() is None  # not before the 1 s delay
    clock.advance(1.001)
    assert state.runtime.make_worker().run_once() is not None
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["result"]["processed"] == 2


def test_transient_failures_on_the_last_attempt_complete_with_errors(make_app, http_server):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    url = http_server.add("/a.jpg", b"busy", status=503)
    _, job = run_job(app, queue, {"itemId": "x", "imageUrls": [url]}, max_retries=0)
    assert job["status"] == "completed"
    assert job["result"]["status"] == "failed" and job["result"]["images"][0]["url"] == url


def test_one_transient_failure_among_successes_does_not_retry(make_app, http_server):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    urls = [http_server.add("/ok.jpg", progressive_jpeg()), http_server.add("/busy.jpg", b"", status=503)]
    _, job = run_job(app, queue, {"itemId": "x", "imageUrls": urls})
    assert job["status"] == "completed" and job["result"]["status"] == "partial"
    assert len(http_server.hits("/ok.jpg")) == 1


def test_rerun_after_a_crash_overwrites_the_same_files(make_app, http_server, clock):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    state = app.extensions["queue_service"]
    urls = [http_server.add("/a.jpg", progressive_jpeg()), http_server.add("/b.png", png_alpha())]
    job_id = queue.add_job("IMAGE_PROCESS", {"itemId": "x", "imageUrls": urls}, app=app)
    # Worker A claims and runs the handler, then dies before recording anything.
    crashed = state.runtime.make_worker()
    claimed = state.runtime.store.claim(crashed.worker_id, "token-a", clock.now())
    with app.app_context():
        first = queue.registry.get("IMAGE_PROCESS").handler(claimed.payload, crashed.context(claimed))
    clock.advance(state.settings.stuck_after + 1)
    assert queue.cleanup_stuck_jobs(app=app) == 1
    assert state.runtime.make_worker().run_once() is not None
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["retryCount"] == 1
    assert [i["url"] for i in job["result"]["images"]] == [i["url"] for i in first["images"]]
    assert state.runtime.store.purge_files(clock.now() + timedelta(days=1)) == 2  # not 4


def test_progress_is_visible_while_the_job_runs(make_app, http_server):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    seen = []
    body = progressive_jpeg()

    def second_image(request):
        seen.append(queue.get_job_status(job_ids[0], app=app)["progress"])
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
    urls = [http_server.add("/1.jpg", body), http_server.add_handler("/2.jpg", second_image)]
    job_ids = [queue.add_job("IMAGE_PROCESS", {"itemId": "x", "imageUrls": urls}, app=app)]
    app.extensions["queue_service"].runtime.make_worker().run_once()
    assert seen == [{"done": 1, "total": 2}]


def test_logs_in_the_seeds_words(make_app, http_server, caplog):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    urls = [http_server.add("/big.jpg", big_jpeg()), http_server.url("/missing.jpg")]
    with caplog.at_level(logging.INFO, logger="queue_service"):
        run_job(app, queue, {"itemId": "x", "imageUrls": urls})
    messages = [record.getMessage() for record in caplog.records]
    assert "[Worker] Processing image 1/2" in messages and "[Worker] Processing image 2/2" in messages
    done = [m for m in messages if m.startswith("[Worker] ✅ Image 1: ")]
    assert done and "KB → " in done[0] and "% smaller)" in done[0]
    assert "[Worker] ❌ Failed to process image 2: HTTP 404" in messages


def test_jpeg_output_and_max_side_from_config(make_app, http_server):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True, QUEUE_IMAGE_FORMAT="jpeg",
                          QUEUE_IMAGE_MAX_SIDE="200",
                          QUEUE_IMAGE_QUALITY=70)
    job_id, job = run_job(app, queue, {"itemId": "x", "imageUrls": [http_server.add("/a.png", png_alpha())]})
    image = job["result"]["images"][0]
    assert image["url"].endswith(".jpg") and (image["width"], image["height"]) == (200, 160)
    stored = app.extensions["queue_service"].runtime.store.get_file(media_name(image["url"]))
    assert stored.content_type == "image/jpeg" and decode(stored.data).format == "JPEG"


# -- SSRF through the job -----------------------------------------------------
def test_private_urls_are_refused_without_the_setting(make_app, http_server):
    app, queue = make_app()  # QUEUE_ALLOW_PRIVATE_URLS off
    http_server.add("/secret.jpg", progressive_jpeg())
    port = http_server.port
    urls = [f"http://{host}:{port}/secret.jpg" for host in
            ("localhost", "127.0.0.1", "127.1", "2130706433", "0x7f.1", "[::1]", "[::ffff:127.0.0.1]",
             "0.0.0.0")]
    urls.append("http://169.254.169.254/latest/meta-data/")
    _, job = run_job(app, queue, {"itemId": "x", "imageUrls": urls})
    assert job["status"] == "completed" and job["result"]["status"] == "failed"
    for image, url in zip(job["result"]["images"], urls):
        assert image["url"] == url and "not public" in image["error"]
    assert http_server.hits() == []


def test_redirect_into_loopback_is_refused(make_app, http_server, network):
    app, queue = make_app()
    http_server.add("/secret.jpg", progressive_jpeg())
    http_server.redirect("/hop.jpg", http_server.url("/secret.jpg"))
    http_server.add("/public.jpg", progressive_jpeg())
    base = f"http://{PUBLIC_HOST}:{http_server.port}"
    urls = [f"{base}/hop.jpg", f"{base}/public.jpg"]
    _, job = run_job(app, queue, {"itemId": "x", "imageUrls": urls})
    first, second = job["result"]["images"]
    assert "not public" in first["error"] and first["url"] == urls[0]
    assert second["error"] is None  # the same host, reached through its checked public address
    assert http_server.hits("/secret.jpg") == []


# -- MongoDB items, callback -----------------------------------------------------
def test_items_hook_points_the_items_document_at_the_new_urls(make_app, http_server, caplog):
    """The host app's items collection is updated by an on_complete hook it
    registers (handlers.image.items_hook), not by the handler."""
    from bson import ObjectId

    from queue_service.handlers.image import items_hook
    from tests.conftest import make_mongo_database

    db, cleanup = make_mongo_database()
    queue = JobQueue(clock=ManualClock())
    queue.on_complete("IMAGE_PROCESS")(items_hook(lambda: db))
    app, queue = make_app(queue, QUEUE_ALLOW_PRIVATE_URLS=True)
    urls = [http_server.add("/a.jpg", progressive_jpeg()), http_server.url("/gone.jpg")]
    oid = ObjectId()
    db["items"].insert_many([{"_id": oid, "imageUrls": urls}, {"_id": "plain-id", "imageUrls": urls},
                             {"_id": "65a1b2c3d4e5f60718293a4b", "imageUrls": urls}])
    try:
        for item_id in (str(oid), "plain-id", "65a1b2c3d4e5f60718293a4b"):
            job_id, job = run_job(app, queue, {"itemId": item_id, "imageUrls": urls})
            stored = db["items"].find_one({"_id": oid if item_id == str(oid) else item_id})
            assert stored["imageUrls"] == [job["result"]["images"][0]["url"], urls[1]]
            assert stored["imageUrls"][0].startswith("/api/queue/media/")
        with caplog.at_level(logging.WARNING, logger="queue_service.worker"):
            _, job = run_job(app, queue, {"itemId": str(ObjectId()), "imageUrls": urls})
        assert job["status"] == "completed" and "not found" in caplog.text
    finally:
        cleanup()


def test_callback_is_signed_and_posted_once(make_app, http_server):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True, QUEUE_CALLBACK_SECRET="s3cret")
    hook = http_server.add("/hook", b"thanks")
    urls = [http_server.add("/a.jpg", progressive_jpeg())]
    job_id, job = run_job(app, queue, {"itemId": "item-9", "imageUrls": urls, "callbackUrl": hook})
    assert job["result"]["callback"] == {"url": hook, "delivered": True, "status": 200, "error": None}
    [hit] = http_server.hits("/hook")
    body = json.loads(hit.body)
    assert body == {"jobId": job_id, "itemId": "item-9", "status": "completed",
                    "images": job["result"]["images"]}
    expected = hmac.new(b"s3cret", hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-Queue-Signature"] == f"sha256={expected}"
    assert hit.headers["Content-Type"] == "application/json"


def test_failed_callback_is_recorded_and_never_reruns_images(make_app, http_server):
    app, queue = make_app(QUEUE_ALLOW_PRIVATE_URLS=True)
    hook = http_server.add("/hook", b"down", status=500)
    urls = [http_server.add("/a.jpg", progressive_jpeg())]
    _, job = run_job(app, queue, {"itemId": "x", "imageUrls": urls, "callbackUrl": hook})
    assert job["status"] == "completed" and job["retryCount"] == 0
    callback = job["result"]["callback"]
    assert callback["delivered"] is False and callback["status"] == 500 and "HTTP 500" in callback["error"]
    assert "X-Queue-Signature" not in http_server.hits("/hook")[0].headers  # no secret configured
    assert len(http_server.hits("/a.jpg")) == 1 and len(http_server.hits("/hook")) == 1


def test_callback_to_a_private_address_is_refused(make_app, http_server, network):
    app, queue = make_app()
    http_server.add("/hook", b"ok")
    urls = [f"http://{PUBLIC_HOST}:{http_server.port}/a.jpg"]
    http_server.add("/a.jpg", progressive_jpeg())
    _, job = run_job(app, queue, {"itemId": "x", "imageUrls": urls, "callbackUrl": http_server.url("/hook")})
    assert job["result"]["images"][0]["error"] is None
    callback = job["result"]["callback"]
    assert callback["delivered"] is False and "not public" in callback["error"]
    assert http_server.hits("/hook") == []


# -- validation at enqueue ----------------------------------------------------
@pytest.mark.parametrize("payload, field", [
    ({"imageUrls": ["http://example.com/a.jpg"]}, "itemId"),
    ({"itemId": "", "imageUrls": ["http://example.com/a.jpg"]}, "itemId"),
    ({"itemId": "a\nb", "imageUrls": ["http://example.com/a.jpg"]}, "itemId"),
    ({"itemId": "x"}, "imageUrls"),
    ({"itemId": "x", "imageUrls": []}, "imageUrls"),
    ({"itemId": "x", "imageUrls": "http://example.com/a.jpg"}, "imageUrls"),
    ({"itemId": "x", "imageUrls": ["http://example.com/a.jpg"] * 21}, "imageUrls"),
    ({"itemId": "x", "imageUrls": ["ftp://example.com/a.jpg"]}, "imageUrls"),
    ({"itemId": "x", "imageUrls": ["file:///etc/passwd"]}, "imageUrls"),
    ({"itemId": "x", "imageUrls": ["http://example.com/a.jpg"], "callbackUrl": "javascript:alert(1)"},
     "callbackUrl"),
    ({"itemId": "x", "imageUrls": ["http://example.com/a.jpg"], "extra": 1}, "extra"),
])
def test_bad_payloads_are_refused_naming_the_field(make_app, payload, field):
    app, queue = make_app()
    with pytest.raises(ValidationError) as info:
        queue.add_job("IMAGE_PROCESS", payload, app=app)
    assert field in info.value.messages["payload"]
    assert queue.get_queue_stats(app=app)["total"] == 0


def test_builtins_are_registered_through_the_public_api():
    queue = JobQueue()
    assert {"IMAGE_PROCESS", "EMAIL_SEND", "CLEANUP"} <= set(queue.registry.names())


def test_registering_builtins_loads_neither_pillow_nor_requests():
    # Pillow (~3 MB) and requests (~4 MB) load on the first job that needs them.
    code = ("import sys; import queue_service; "
            "before = {m for m in ('PIL', 'requests') if m in sys.modules}; "
            "queue_service.JobQueue(); "
            "print(sorted({m for m in ('PIL', 'requests') if m in sys.modules} - before))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("config", [{"QUEUE_IMAGE_FORMAT": "gif"}, {"QUEUE_IMAGE_QUALITY": 0},
                                    {"QUEUE_IMAGE_QUALITY": "101"}, {"QUEUE_IMAGE_MAX_SIDE": 8},
                                    {"QUEUE_IMAGE_MAX_SIDE": "big"}])
def test_bad_image_settings_are_refused(config):
    from queue_service.core.errors import ConfigurationError
    from queue_service.core.settings import Settings

    with pytest.raises(ConfigurationError, match=next(iter(config))):
        Settings.from_config(config)


def test_image_settings_parse_and_the_secret_stays_out_of_as_dict():
    from queue_service.core.settings import Settings

    settings = Settings.from_config({"QUEUE_IMAGE_FORMAT": " JPG ", "QUEUE_IMAGE_QUALITY": "85",
                                     "QUEUE_IMAGE_MAX_SIDE": "1024", "QUEUE_CALLBACK_SECRET": "s"})
    assert (settings.image_format, settings.image_quality, settings.image_max_side) == ("jpeg", 85, 1024)
    assert settings.callback_secret == "s" and "callback_secret" not in settings.as_dict()
