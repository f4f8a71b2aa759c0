"""The IMAGE_PROCESS pipeline on Pillow: decode within a memory budget, apply
the EXIF orientation, fit, encode without metadata.

``transcode()`` is usable on its own (the benchmarks time it against plain
Pillow). Pillow is imported inside the functions that use it: it costs about
3 MB resident, which a web process that never runs an image job should not pay.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: Decoders we open; anything else is refused before decoding. HEIC (what
#: iPhones write) is opened by pillow-heif, loaded on the first HEIC seen.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
#: ISO BMFF major brands of HEVC-coded HEIF stills, read at bytes 8..12.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
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
