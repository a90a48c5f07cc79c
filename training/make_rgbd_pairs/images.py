"""One input image, decoded robustly into what a pair stores: 8-bit RGB, upright, downscaled, and its bytes.

Whatever one file does wrong (unreadable, truncated, too small, a decompression bomb, an odd mode) becomes a
`SkippedImage` with a short reason, listed in the output instead of stopping the job.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from processing_depth import to_rgb_image
from training.depth_png import PNG_COMPRESS_LEVEL


MIN_IMAGE_SIDE = 16
DEFAULT_MAX_PIXELS = 50_000_000
JPEG_QUALITY = 95
EXIF_ORIENTATION_TAG = 0x0112


class SkippedImage(Exception):
    """An input image that is not used; `reason` is a short keyword, `detail` a human-readable explanation."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class PreparedImage:
    """An input image as it is stored: RGB pixels, the bytes holding exactly them, and their (height, width)."""

    image: Image.Image
    data: bytes

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.image.height, self.image.width


def exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF is common in the wild and must not cost the image
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB (`processing_depth.to_rgb_image`); a mode PIL cannot convert skips the image."""
    try:
        return to_rgb_image(image)
    except ValueError as error:
        raise SkippedImage("unsupported_mode", str(error)) from error


def _encode_image(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def prepare_image(raw: bytes | Image.Image, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedImage:
    """Decode one input image into what is stored: RGB, upright, longer side <= `max_side`.

    Raises `SkippedImage` for images that cannot be used (unreadable, truncated, too small, too large).
    """
    with warnings.catch_warnings():
        # Sizes are checked against max_pixels below; PIL's own bomb warning would only repeat that.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = raw if isinstance(raw, Image.Image) else Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as error:
            raise SkippedImage("too_large", str(error)) from error
        except UnidentifiedImageError as error:
            raise SkippedImage("unreadable", "not an image format PIL can read") from error
        except (OSError, ValueError, SyntaxError) as error:
            raise SkippedImage("unreadable", f"{type(error).__name__}: {error}") from error

        width, height = image.size
        if width * height > max_pixels:
            raise SkippedImage("too_large", f"{width}x{height} is over --max-pixels {max_pixels}")
        if min(width, height) < MIN_IMAGE_SIDE:
            raise SkippedImage("too_small", f"{width}x{height}: a side is under {MIN_IMAGE_SIDE} px")
        scale = min(1.0, max_side / max(width, height))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(target) < MIN_IMAGE_SIDE:
            raise SkippedImage("too_small", f"{width}x{height} is under {MIN_IMAGE_SIDE} px a side at --max-side")
        source_format, source_mode = image.format, image.mode
        orientation = exif_orientation(image)
        if scale < 1 and source_format == "JPEG":
            image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale in the DCT domain: big photos load fast

        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise SkippedImage("too_large", str(error)) from error
        except OSError as error:
            reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
            raise SkippedImage(reason, f"{type(error).__name__}: {error}") from error
        except (ValueError, SyntaxError, EOFError) as error:
            raise SkippedImage("unreadable", f"{type(error).__name__}: {error}") from error

    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        if orientation in (5, 6, 7, 8):  # these orientations swap width and height
            target = target[::-1]
    rgb = to_rgb(image)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)

    unchanged = isinstance(raw, bytes) and source_mode == "RGB" and scale == 1 and orientation == 1
    if source_format == "JPEG" and unchanged:
        return PreparedImage(rgb, raw)  # no re-encoding: no extra loss and no CPU spent
    if source_format in ("JPEG", "MPO"):
        data = _encode_image(rgb, "JPEG")
        # Estimate depth from the pixels a reader will decode, not from the ones before JPEG compression.
        with Image.open(io.BytesIO(data)) as stored:
            rgb = stored.convert("RGB")
        return PreparedImage(rgb, data)
    return PreparedImage(rgb, _encode_image(rgb, "PNG"))
