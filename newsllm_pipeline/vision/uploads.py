"""Uploaded images: checked by their bytes (format, declared size, structure) without decoding, then decoded and
scaled down for the describer. Checking is cheap and runs for every request; decoding costs up to
`max_pixels` × 4 bytes, so the service runs it only inside a describer slot."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from ..documents.descriptions import rgb_on_white
from ..serving.errors import ServiceError
from ..serving.gate import MB

ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF")  # Pillow's names, judged from the bytes
ACCEPTED_NAMES = "JPG, PNG, BMP, TIFF or GIF"


@dataclass(frozen=True)
class Upload:
    """An image as received, checked (format, declared size, structure) but not decoded: what a request
    holds while it waits for a slot, so waiting costs its bytes and not its pixels."""

    data: bytes
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class ReceivedImage:
    picture: Image.Image  # RGB, transparent areas on white, longest side at most max_side
    format: str
    width: int  # as received
    height: int
    bytes: int

    def summary(self) -> dict:
        resized = self.picture.size != (self.width, self.height)
        return {
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "described_at": list(self.picture.size) if resized else None,
        }


def check_upload(data: bytes, max_bytes: int, max_pixels: int) -> Upload:
    """The uploaded bytes judged by content (not by any file name), without decoding the pixels.
    Raises ServiceError (400, 413 for size) with the reason."""
    if not data:
        raise ServiceError("the image is empty (0 bytes)", code="invalid_image")
    if len(data) > max_bytes:
        raise ServiceError(
            f"the image is {len(data) / MB:.1f} MB, over the {max_bytes / MB:.3g} MB limit", 413, "image_too_large"
        )
    try:
        with Image.open(io.BytesIO(data)) as opened:
            kind, (width, height) = opened.format, opened.size
            if kind not in ACCEPTED_FORMATS:
                raise ServiceError(f"{kind} images are not accepted: send {ACCEPTED_NAMES}", code="unsupported_format")
            if width * height > max_pixels:
                raise ServiceError(
                    f"the image declares {width} × {height} pixels, over the limit of {max_pixels:,} "
                    "pixels (a decompression bomb, or a picture to scale down first)",
                    code="image_too_large",
                )
            opened.verify()  # checksums and structure, without decoding
    except ServiceError:
        raise
    except Image.UnidentifiedImageError as error:
        raise ServiceError(f"not an image in a known format: send {ACCEPTED_NAMES}", code="invalid_image") from error
    except Exception as error:  # any decoder failure on the client's bytes is bad input, never a server fault
        raise ServiceError(f"not a readable image: {error}", code="invalid_image") from error
    return Upload(data, kind, width, height)


def decode_upload(upload: Upload, max_side: int) -> ReceivedImage:
    """The pixels, ready for the describer. Run only inside a describer slot: the full-size picture takes up
    to `max_pixels` × 4 bytes in memory, whatever its size on the wire, and is scaled down before any copy."""
    try:
        with Image.open(io.BytesIO(upload.data)) as opened:
            if opened.mode not in _COARSELY_RESIZED_MODES:
                _fit(opened, max_side)  # decodes (JPEG at a reduced scale) and shrinks in place
            opened.load()
            picture = rgb_on_white(opened)
    except Exception as error:  # verify() passed, but the pixel data itself can still be corrupt
        raise ServiceError(f"not a readable image: {error}", code="invalid_image") from error
    _fit(picture, max_side)
    return ReceivedImage(picture, upload.format, upload.width, upload.height, len(upload.data))


_COARSELY_RESIZED_MODES = ("1", "P", "PA")  # Pillow resizes these with NEAREST: convert them to RGB first


def _fit(picture: Image.Image, max_side: int) -> None:
    """Scale `picture` down in place so its longer side is at most `max_side`."""
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
