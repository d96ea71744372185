"""image_to_array: every raw encoding, padded steps, byte order, JPEG/PNG, and every bad input."""

import struct
import tracemalloc

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vit_perception.core.images import ENCODINGS, MAX_SIDE, DecodedImage, image_to_array
from vit_perception.core.types import ImageFrame
from vit_perception.errors import ImageError

PAD_BYTE = 0xAB  # row padding is filled with this, so reading it by mistake shows up


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 test picture: gradients, a checkerboard, a disc, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * xx / max(width - 1, 1)
    green = 255 * yy / max(height - 1, 1)
    blue = np.where(((xx // 16) + (yy // 16)) % 2 == 0, 220.0, 30.0)
    disc = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(height, width) / 3) ** 2
    rgb = np.stack([np.where(disc, 255 - red, red), green, blue], -1)  # (H, W, 3)
    return (rgb + rng.normal(0, 6, rgb.shape)).clip(0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, encoding: str, big_endian: bool = False) -> np.ndarray:
    """The pixels an `encoding` image of picture `rgb` holds, (H, W, C), in wire byte order."""
    channels, dtype, order = ENCODINGS[encoding]
    gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round()
    alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)
    source = {'rgb': rgb, 'bgr': rgb[..., ::-1], 'rgba': np.concatenate([rgb, alpha], -1),
              'bgra': np.concatenate([rgb[..., ::-1], alpha], -1),
              'mono': gray.astype(np.uint8)[..., None]}[order]
    if dtype.itemsize == 2:
        # 16-bit = the same intensities: v8 * 257 maps 0..255 exactly onto 0..65535.
        source = source.astype(np.uint16) * 257
        source = source.astype(dtype.newbyteorder('>' if big_endian else '<'))
    return np.ascontiguousarray(source)


def reference_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """What the model should see for picture `rgb` sent as `encoding`: RGB uint8 (H, W, 3)."""
    pixels = encode(rgb, encoding)
    if pixels.dtype.itemsize == 2:
        pixels = (pixels.astype(np.uint32) // 257).astype(np.uint8)
    order = ENCODINGS[encoding][2]
    if order == 'mono':
        return np.repeat(pixels, 3, axis=-1)
    return pixels[..., :3][..., ::-1] if order.startswith('bgr') else pixels[..., :3]


def raw_frame(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False,
              container=bytes) -> ImageFrame:
    """A sensor_msgs/Image-like frame holding `pixels` with `pad` extra bytes per row."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).view(np.uint8)  # (H, W * C * itemsize)
    padded = np.full((height, rows.shape[1] + pad), PAD_BYTE, np.uint8)
    padded[:, :rows.shape[1]] = rows
    data = padded.tobytes()
    if container is np.ndarray:
        data = padded.reshape(-1)
    elif container is not bytes:
        data = container(bytearray(data))
    return ImageFrame(stamp_ns=1, frame_id='cam', data=data, height=height, width=width,
                      encoding=encoding, step=rows.shape[1] + pad, is_bigendian=big_endian)


def buffer_of(frame: ImageFrame) -> np.ndarray:
    return np.frombuffer(frame.data, np.uint8) if not isinstance(frame.data, np.ndarray) \
        else frame.data


# ------------------------------------------------------------------------------------------
# raw images


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('pad', [0, 6])
def test_raw_encoding_decodes_to_a_view_with_the_right_values(encoding, pad):
    rgb = picture(5, 7)
    wire = encode(rgb, encoding)
    frame = raw_frame(wire, encoding, pad=pad)

    image = image_to_array(frame)

    channels, dtype, order = ENCODINGS[encoding]
    assert image.pixels.shape == (5, 7, channels)
    assert image.pixels.dtype == dtype
    assert image.channel_order == order
    np.testing.assert_array_equal(image.pixels, wire)
    assert np.shares_memory(image.pixels, buffer_of(frame))  # zero copy, padding skipped


@pytest.mark.parametrize('encoding', ['mono16', '16UC1', 'rgb16', 'bgra16'])
def test_big_endian_16_bit_is_byte_swapped_to_native(encoding):
    rgb = picture(4, 6)
    frame = raw_frame(encode(rgb, encoding, big_endian=True), encoding, pad=2, big_endian=True)

    image = image_to_array(frame)

    assert image.pixels.dtype == np.dtype(np.uint16)  # native byte order
    np.testing.assert_array_equal(image.pixels, encode(rgb, encoding).astype(np.uint16))


@pytest.mark.parametrize('encoding', ['mono16', 'rgb16'])
def test_16_bit_rows_at_odd_offsets_are_copied_aligned(encoding):
    rgb = picture(3, 5)
    frame = raw_frame(encode(rgb, encoding), encoding, pad=3)  # odd step: unaligned rows

    image = image_to_array(frame)

    assert image.pixels.flags.aligned
    np.testing.assert_array_equal(image.pixels, encode(rgb, encoding))


def test_rgb8_from_every_buffer_type_is_a_view():
    wire = encode(picture(6, 4), 'rgb8')
    for container in (bytes, bytearray, memoryview, np.ndarray):
        frame = raw_frame(wire, 'rgb8', pad=4, container=container)
        image = image_to_array(frame)
        np.testing.assert_array_equal(image.pixels, wire)
        assert np.shares_memory(image.pixels, np.frombuffer(frame.data, np.uint8)), container


def test_decoded_image_reports_its_size():
    image = image_to_array(raw_frame(encode(picture(3, 8), 'mono8'), 'mono8'))
    assert (image.height, image.width) == (3, 8)


def _frame(**fields) -> ImageFrame:
    base = dict(stamp_ns=1, frame_id='cam', data=bytes(4 * 6 * 3), height=4, width=6,
                encoding='rgb8', step=18)
    base.update(fields)
    return ImageFrame(**base)


@pytest.mark.parametrize('fields, expected', [
    ({'encoding': 'yuv422'}, "unsupported encoding 'yuv422': expected one of rgb8, bgr8"),
    ({'encoding': ''}, "unsupported encoding ''"),
    ({'step': 17, 'data': bytes(17 * 4)}, 'step=17 is shorter than one row: expected >= '
                                          'width * 3 bytes = 18 for rgb8'),
    ({'encoding': 'mono16', 'step': 11, 'data': bytes(44)}, 'expected >= width * 2 bytes = 12'),
    ({'data': bytes(71)}, '71 data bytes for rgb8 6x4: expected step * height = 18 * 4 = 72'),
    ({'data': bytes(73)}, '73 data bytes for rgb8 6x4: expected step * height = 18 * 4 = 72'),
    ({'data': b''}, 'empty image data: expected step * height bytes'),
    ({'height': 0}, f'height=0: expected 1..{MAX_SIDE}'),
    ({'width': 0}, f'width=0: expected 1..{MAX_SIDE}'),
    ({'height': -3}, f'height=-3: expected 1..{MAX_SIDE}'),
    ({'width': MAX_SIDE + 1}, f'width={MAX_SIDE + 1}: expected 1..{MAX_SIDE}'),
    ({'data': 3.5}, 'data of type float is not a byte buffer'),
    ({'data': [1, 2, 3]}, 'data of type list is not a byte buffer'),
])
def test_bad_raw_frames_raise_one_line_image_errors(fields, expected):
    with pytest.raises(ImageError) as info:
        image_to_array(_frame(**fields))
    message = str(info.value)
    assert expected in message
    assert '\n' not in message
    assert message.startswith("image from 'cam': ")


def test_absurd_size_is_rejected_before_allocating():
    frame = _frame(height=100_000, width=100_000, step=300_000, data=bytes(16))
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=f'height=100000: expected 1..{MAX_SIDE}'):
            image_to_array(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000  # bytes: nothing image-sized was allocated


def test_claimed_size_larger_than_the_data_is_rejected_without_reading():
    frame = _frame(height=MAX_SIDE, width=MAX_SIDE, step=3 * MAX_SIDE, data=bytes(16))
    with pytest.raises(ImageError, match='16 data bytes for rgb8'):
        image_to_array(frame)


# ------------------------------------------------------------------------------------------
# compressed images


def compressed(data: bytes, fmt: str = 'png') -> ImageFrame:
    return ImageFrame(stamp_ns=1, frame_id='cam', data=data, format=fmt)


def png_bytes(pixels: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode('.png', pixels)
    assert ok
    return encoded.tobytes()


def jpeg_bytes(bgr: np.ndarray, quality: int = 95) -> bytes:
    ok, encoded = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize('fmt', ['png', 'bgr8; png compressed bgr8'])
def test_png_color_decodes_losslessly_in_bgr_order(fmt):
    rgb = picture(30, 41)
    image = image_to_array(compressed(png_bytes(rgb[..., ::-1]), fmt))
    assert image.channel_order == 'bgr'
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, rgb[..., ::-1])


def test_png_mono_rgba_and_16_bit():
    rgb = picture(9, 12)
    mono = encode(rgb, 'mono8')
    bgra = encode(rgb, 'bgra8')
    mono16 = encode(rgb, 'mono16')

    gray = image_to_array(compressed(png_bytes(mono[..., 0])))
    alpha = image_to_array(compressed(png_bytes(bgra)))
    deep = image_to_array(compressed(png_bytes(mono16[..., 0])))

    assert gray.channel_order == 'mono' and gray.pixels.shape == (9, 12, 1)
    np.testing.assert_array_equal(gray.pixels, mono)
    assert alpha.channel_order == 'bgra'
    np.testing.assert_array_equal(alpha.pixels, bgra)
    assert deep.channel_order == 'mono' and deep.pixels.dtype == np.uint16
    np.testing.assert_array_equal(deep.pixels, mono16)


@pytest.mark.parametrize('fmt', ['jpeg', 'rgb8; jpeg compressed bgr8'])
def test_jpeg_decodes_close_to_the_original_in_bgr_order(fmt):
    rgb = picture(48, 64)
    image = image_to_array(compressed(jpeg_bytes(rgb[..., ::-1]), fmt))
    assert image.channel_order == 'bgr'
    assert image.pixels.shape == (48, 64, 3)
    error = np.abs(image.pixels.astype(int) - rgb[..., ::-1]).mean()
    swapped = np.abs(image.pixels.astype(int) - rgb).mean()
    assert error < 10.0 < 50.0 < swapped, (error, swapped)  # lossy (noise, 4:2:0) but BGR


def test_jpeg_bytes_without_a_format_are_a_raw_frame_with_no_encoding():
    frame = ImageFrame(stamp_ns=1, frame_id='cam', data=jpeg_bytes(picture(8, 8)))
    with pytest.raises(ImageError, match="unsupported encoding ''"):
        image_to_array(frame)


def test_jpeg_grayscale_decodes_to_mono():
    mono = encode(picture(16, 16), 'mono8')[..., 0]
    image = image_to_array(compressed(jpeg_bytes(mono), 'jpeg'))
    assert image.channel_order == 'mono' and image.pixels.shape == (16, 16, 1)


def _png_claiming(height: int, width: int) -> bytes:
    data = bytearray(png_bytes(picture(4, 4)))
    data[16:24] = struct.pack('>II', width, height)
    return bytes(data)


def _jpeg_claiming(height: int, width: int) -> bytes:
    data = bytearray(jpeg_bytes(picture(8, 8)))
    sof = data.index(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


@pytest.mark.parametrize('data, expected', [
    (b'', 'empty image data: expected JPEG/PNG bytes'),
    (b'GIF89a' + bytes(40), "starts with b'GIF8': expected JPEG (ff d8 ff) or PNG"),
    (b'\x89PNG\r\n\x1a\n' + b'x' * 100, 'corrupt PNG header (108 bytes)'),
    (b'\xff\xd8\xff', 'corrupt JPEG header (3 bytes)'),
    (_png_claiming(100_000, 100_000), f'(PNG): height=100000: expected 1..{MAX_SIDE}'),
    (_png_claiming(10, 0), f'(PNG): width=0: expected 1..{MAX_SIDE}'),
    (_jpeg_claiming(60_000, 8), f'(JPEG): height=60000: expected 1..{MAX_SIDE}'),
])
def test_bad_compressed_data_raises_one_line_image_errors(data, expected):
    with pytest.raises(ImageError) as info:
        image_to_array(compressed(data, 'jpeg'))
    assert expected in str(info.value)
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('kind', ['png', 'jpeg'])
def test_truncated_files_are_corrupt(kind):
    rgb = picture(40, 50)
    data = png_bytes(rgb) if kind == 'png' else jpeg_bytes(rgb)
    with pytest.raises(ImageError, match=f'corrupt {kind.upper()} data'):
        image_to_array(compressed(data[:len(data) // 2], kind))


def test_compressed_depth_is_refused():
    with pytest.raises(ImageError, match='compressedDepth.*expected JPEG or PNG'):
        image_to_array(compressed(png_bytes(picture(4, 4)), '16UC1; compressedDepth png'))


# ------------------------------------------------------------------------------------------
# properties


@settings(max_examples=150, deadline=None)
@given(height=st.integers(1, 24), width=st.integers(1, 24),
       encoding=st.sampled_from(sorted(ENCODINGS)), pad=st.integers(0, 9),
       big_endian=st.booleans(), seed=st.integers(0, 2**16),
       container=st.sampled_from([bytes, bytearray, memoryview, np.ndarray]))
def test_valid_raw_frames_round_trip(height, width, encoding, pad, big_endian, seed, container):
    rgb = picture(height, width, seed)
    frame = raw_frame(encode(rgb, encoding, big_endian), encoding, pad, big_endian, container)

    image = image_to_array(frame)

    channels, dtype, order = ENCODINGS[encoding]
    assert image.pixels.shape == (height, width, channels)
    assert image.pixels.dtype == dtype and image.channel_order == order
    np.testing.assert_array_equal(image.pixels, encode(rgb, encoding))


def _decodes_or_image_error(frame: ImageFrame) -> None:
    try:
        image = image_to_array(frame)
    except ImageError as err:
        assert '\n' not in str(err)
        return
    assert isinstance(image, DecodedImage)
    assert image.pixels.ndim == 3 and image.pixels.shape[2] in (1, 3, 4)
    assert image.pixels.dtype in (np.uint8, np.uint16)
    assert 0 < image.pixels.shape[0] <= MAX_SIDE and 0 < image.pixels.shape[1] <= MAX_SIDE
    if not frame.compressed:
        assert image.pixels.shape[:2] == (frame.height, frame.width)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), height=st.integers(-2, 40), width=st.integers(-2, 40),
       step=st.integers(-4, 200), big_endian=st.booleans(),
       encoding=st.sampled_from(sorted(ENCODINGS) + ['', 'yuv422', '32FC1', 'RGB8']) | st.text(),
       fmt=st.sampled_from(['', '', 'jpeg', 'png', 'rgb8; jpeg compressed bgr8']))
def test_random_frames_decode_or_raise_image_error(data, height, width, step, big_endian,
                                                   encoding, fmt):
    _decodes_or_image_error(ImageFrame(stamp_ns=1, frame_id='cam', data=data, height=height,
                                       width=width, encoding=encoding, step=step,
                                       is_bigendian=big_endian, format=fmt))


_VALID_FILES = [png_bytes(picture(12, 10)), jpeg_bytes(picture(12, 10)),
                png_bytes(encode(picture(7, 9), 'mono16')[..., 0])]


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(_VALID_FILES) - 1), cut=st.integers(3, 2000),
       edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6))
def test_damaged_png_and_jpeg_decode_or_raise_image_error(which, cut, edits):
    data = bytearray(_VALID_FILES[which][:cut])
    for position, value in edits:
        if position < len(data):
            data[position] = value
    _decodes_or_image_error(compressed(bytes(data), 'jpeg'))
