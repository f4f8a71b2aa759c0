"""IMAGE_PROCESS: fetch each image through the guard, transcode it, store it.

``transcode()`` is the whole Pillow pipeline and is usable on its own (the
benchmarks time it against plain Pillow). Pillow is imported inside the
functions that use it: it costs about 3 MB resident, which a web process
that never runs an image job should not pay.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: Decoders we open; anything else is refused before decoding.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
OUTPUT_FORMATS = {"webp": ("WEBP", "image/webp", "webp"), "jpeg": ("JPEG", "image/jpeg", "jpg")}


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


def _open(data: bytes) -> "PILImage.Image":
    from PIL import Image, UnidentifiedImageError

    try:
        # The bomb check runs inside Image.open from the header alone; above
        # MAX_IMAGE_PIXELS it only warns, so the warning is made an error here
        # (the limit itself is never lifted).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"not a supported image (allowed: {', '.join(ALLOWED_FORMATS)})") from None
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


def transcode(data: bytes, *, max_side: int = 1600, fmt: str = "webp", quality: int = 80) -> Transcoded:
    """Decode ``data`` (JPEG, PNG, WebP or GIF's first frame), apply the EXIF
    orientation, fit it within ``max_side`` and encode it as ``fmt`` ("webp"
    or "jpeg") at ``quality`` with EXIF, GPS and XMP dropped (the ICC colour
    profile is kept: it is colour, not metadata). Raises ImageError."""
    from PIL import Image, ImageOps

    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(OUTPUT_FORMATS)}, got {fmt!r}")
    if max_side < 1 or not 1 <= quality <= 100:
        raise ValueError("max_side must be >= 1 and quality 1..100")
    pil_format, content_type, extension = OUTPUT_FORMATS[fmt]
    with _open(data) as source:
        try:
            if source.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale. draft() keeps both
                # sides >= the box, so the box must be the fitted size, not a
                # square: (1600, 1200) for 4000x3000, which halves time and memory.
                source.draft("RGB", fitted_box(source.width, source.height, max_side))
            if source.format == "GIF":
                source.seek(0)
            icc_profile = source.info.get("icc_profile")
            image = ImageOps.exif_transpose(source)  # a new, loaded image without the tag
            if image.width > max_side or image.height > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            image = _to_output_mode(image, keep_alpha=pil_format == "WEBP")
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
            raise ImageError(f"unreadable image: {exc}") from None
        except Image.DecompressionBombError as exc:  # a frame larger than its header said
            raise ImageError(f"image too large to decode safely: {exc}") from None
    # Pillow writes EXIF/XMP only when passed to save(); we pass neither.
    options: dict = {"quality": quality}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if pil_format == "WEBP":
        options["method"] = 4
    else:
        options.update(optimize=True, progressive=True)
    out = io.BytesIO()
    image.save(out, pil_format, **options)
    width, height = image.size
    image.close()
    return Transcoded(out.getvalue(), width, height, content_type, extension, len(data))
