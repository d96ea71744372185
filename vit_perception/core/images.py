"""Image messages -> pixel arrays: raw sensor_msgs/Image and JPEG/PNG sensor_msgs/CompressedImage.

`image_to_array` checks every size before touching the pixels and returns a numpy *view* of the
message buffer whenever the layout allows it (row padding included): no copy, no channel reorder.
The channel order travels with the pixels (`DecodedImage.channel_order`); the preprocessor
reorders on the small, resized tensor instead of copying the full image here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from vit_perception.core.types import ImageFrame
from vit_perception.errors import ImageError

# Largest height or width accepted (raw or compressed); larger claims are rejected before any
# pixel memory is allocated. 16384 covers every camera sensor in use.
MAX_SIDE = 16384

# Most pixels a compressed image may claim per byte of data. Real frames stay far below it (a flat
# grey 4K frame: ~64 pixels per byte as JPEG, ~330 as PNG at level 9; deflate cannot exceed ~1032
# bytes per byte); a header claiming more is a decompression bomb and is rejected before decoding.
MAX_PIXELS_PER_COMPRESSED_BYTE = 1024

CHANNEL_ORDERS = ('rgb', 'bgr', 'rgba', 'bgra', 'mono')

# encoding -> (channels, dtype of one channel, channel order). '8UC*' follow OpenCV (BGR).
ENCODINGS: dict[str, tuple[int, np.dtype, str]] = {
    'rgb8': (3, np.dtype(np.uint8), 'rgb'),
    'bgr8': (3, np.dtype(np.uint8), 'bgr'),
    'rgba8': (4, np.dtype(np.uint8), 'rgba'),
    'bgra8': (4, np.dtype(np.uint8), 'bgra'),
    'mono8': (1, np.dtype(np.uint8), 'mono'),
    '8UC1': (1, np.dtype(np.uint8), 'mono'),
    '8UC3': (3, np.dtype(np.uint8), 'bgr'),
    '8UC4': (4, np.dtype(np.uint8), 'bgra'),
    'mono16': (1, np.dtype(np.uint16), 'mono'),
    '16UC1': (1, np.dtype(np.uint16), 'mono'),
    'rgb16': (3, np.dtype(np.uint16), 'rgb'),
    'bgr16': (3, np.dtype(np.uint16), 'bgr'),
    'rgba16': (4, np.dtype(np.uint16), 'rgba'),
    'bgra16': (4, np.dtype(np.uint16), 'bgra'),
}

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_JPEG_MAGIC = b'\xff\xd8\xff'
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic), which carry the size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                       0xCF})


@dataclass(frozen=True)
class DecodedImage:
    """Pixels of one image, (H, W, C) uint8 or uint16, in the channel order they arrived in.

    `pixels` is a read-only view of the message buffer for raw images (a copy only for 16-bit
    data in foreign byte order or at odd offsets); never write to it.
    """

    pixels: np.ndarray  # (H, W, C) uint8 | uint16, C = 1, 3 or 4
    channel_order: str  # one of CHANNEL_ORDERS

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


def image_to_array(frame: ImageFrame) -> DecodedImage:
    """Turn a raw or compressed image frame into pixels; raises ImageError on any bad input."""
    buf = _as_bytes(frame.data, _name(frame))
    if buf.size == 0:
        raise ImageError(f'{_name(frame)}: empty image data: expected '
                         f'{"JPEG/PNG bytes" if frame.compressed else "step * height bytes"}')
    if frame.compressed:
        return _decode_compressed(frame, buf)
    return _raw_view(frame, buf)


def _name(frame: ImageFrame) -> str:
    return f"image from '{frame.frame_id}'" if frame.frame_id else 'image'


def _as_bytes(data, name: str) -> np.ndarray:
    """The message buffer as a flat uint8 array (a view; bytes, bytearray, memoryview, ndarray)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as err:
        raise ImageError(f'{name}: data of type {type(data).__name__} is not a byte buffer '
                         f'({err}): expected bytes, bytearray, memoryview or a numpy array'
                         ) from None


def _check_side(name: str, what: str, value: int) -> None:
    if not 0 < value <= MAX_SIDE:
        raise ImageError(f'{name}: {what}={value}: expected 1..{MAX_SIDE}')


def _raw_view(frame: ImageFrame, buf: np.ndarray) -> DecodedImage:
    name = _name(frame)
    spec = ENCODINGS.get(frame.encoding)
    if spec is None:
        raise ImageError(f'{name}: unsupported encoding {frame.encoding!r}: expected one of '
                         f'{", ".join(ENCODINGS)} (or a JPEG/PNG CompressedImage)')
    channels, dtype, order = spec
    height, width, step = int(frame.height), int(frame.width), int(frame.step)
    _check_side(name, 'height', height)
    _check_side(name, 'width', width)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError(f'{name}: step={step} is shorter than one row: expected >= width * '
                         f'{channels * dtype.itemsize} bytes = {row_bytes} for {frame.encoding}')
    if buf.size != step * height:
        raise ImageError(f'{name}: {buf.size} data bytes for {frame.encoding} {width}x{height}: '
                         f'expected step * height = {step} * {height} = {step * height}')
    rows = buf.reshape(height, step)[:, :row_bytes]  # (H, row_bytes), a view
    if dtype.itemsize == 1:
        return DecodedImage(rows.reshape(height, width, channels), order)  # (H, W, C) view
    wire = dtype.newbyteorder('>' if frame.is_bigendian else '<')
    pixels = rows.view(wire).reshape(height, width, channels)  # (H, W, C) view
    if not wire.isnative:
        pixels = pixels.astype(dtype)  # byte swap: the one unavoidable copy
    elif not pixels.flags.aligned:
        pixels = np.ascontiguousarray(pixels)  # odd step/offset: torch needs aligned uint16
    return DecodedImage(pixels, order)


def _decode_compressed(frame: ImageFrame, buf: np.ndarray) -> DecodedImage:
    name = _name(frame)
    if 'compresseddepth' in frame.format.lower():
        raise ImageError(f'{name}: format {frame.format!r} (compressedDepth) is not supported: '
                         'expected JPEG or PNG color/mono images')
    head = buf[:8].tobytes()
    if head.startswith(_PNG_MAGIC):
        kind, size = 'PNG', _png_size(buf)
    elif head.startswith(_JPEG_MAGIC):
        kind, size = 'JPEG', _jpeg_size(buf)
    else:
        raise ImageError(f'{name}: format {frame.format!r} but the data starts with {head[:4]!r}: '
                         'expected JPEG (ff d8 ff) or PNG (89 50 4e 47) bytes')
    if size is None:
        raise ImageError(f'{name}: corrupt {kind} header ({buf.size} bytes): expected a '
                         f'complete {kind} file')
    _check_side(f'{name} ({kind})', 'height', size[0])
    _check_side(f'{name} ({kind})', 'width', size[1])
    if size[0] * size[1] > MAX_PIXELS_PER_COMPRESSED_BYTE * buf.size:
        raise ImageError(f'{name}: {kind} header claims {size[1]}x{size[0]} pixels from only '
                         f'{buf.size} bytes: expected at most '
                         f'{MAX_PIXELS_PER_COMPRESSED_BYTE} pixels per compressed byte '
                         '(a truncated or forged file)')
    try:
        pixels = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageError(f'{name}: corrupt {kind} data ({str(err).strip().splitlines()[-1]}): '
                         f'expected a decodable {kind} file') from None
    if pixels is None or pixels.size == 0:
        raise ImageError(f'{name}: corrupt {kind} data ({buf.size} bytes, OpenCV could not decode '
                         f'it): expected a decodable {kind} file')
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(f'{name}: {kind} decodes to {pixels.dtype}: expected 8- or 16-bit pixels')
    if pixels.ndim == 2:
        return DecodedImage(pixels[:, :, None], 'mono')  # (H, W, 1) view
    order = {1: 'mono', 3: 'bgr', 4: 'bgra'}.get(pixels.shape[2])
    if order is None:
        raise ImageError(f'{name}: {kind} decodes to {pixels.shape[2]} channels: '
                         'expected 1, 3 or 4')
    return DecodedImage(pixels, order)  # OpenCV order (BGR), reordered later on the tensor


def _png_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from the PNG IHDR chunk, or None if it is missing."""
    if buf.size < 24 or buf[12:16].tobytes() != b'IHDR':
        return None
    width, height = struct.unpack_from('>II', memoryview(buf), 16)
    return height, width


def _jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from the first JPEG start-of-frame segment, or None if there is none."""
    data = memoryview(buf)  # no copy; indexing yields ints
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack_from('>HH', data, pos + 5)
            return height, width
        if length < 2:
            return None
        pos += 2 + length
    return None

