"""Preprocessor vs the HF image processors (PIL backend) for every encoding, size and crop.

Differences are measured in 8-bit levels: 1 level = 1 / (255 * std) in the normalized output
(0.0078 for std 0.5, 0.0175 for std 0.224). Measured here (torch 2.13, Pillow 11-13):
- uint8 resize path (CPU): max 1.0 level in every test below, mean <= 0.25 (<= 0.01 for most
  sizes); one exploratory picture reached 2.0 levels with bicubic upscaling (37x91 -> 256).
- float32 resize path (16-bit images; 8-bit on devices without a uint8 resize, e.g. CUDA):
  max 1.075 levels here (1.18 on an exploratory picture), mean <= 0.31 (no uint8 rounding).
16-bit images hold v8 * 257 and are compared against HF on the equivalent 8-bit image.
"""

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BitImageProcessorPil, DeiTImageProcessorPil, ViTImageProcessorPil
from transformers.image_transforms import get_resize_output_image_size

from vit_perception.core.images import ENCODINGS, DecodedImage, image_to_array
from vit_perception.core.preprocess import (
    Preprocessor,
    preprocess_config_from_hf,
    resample_from_hf,
)
from vit_perception.core.types import ImageFrame
from vit_perception.errors import ConfigError, ImageError
from vit_perception.model.config import PreprocessConfig

MAX_LEVELS = 1.05  # uint8 path
MAX_LEVELS_BICUBIC_UP = 2.05  # uint8 path, bicubic upscaling
MAX_LEVELS_FLOAT = 1.25  # float32 path
MEAN_LEVELS = 0.35  # both paths: catches systematic offsets (a half-pixel shift is > 2)

# preprocessor_config.json as published on the hub (google/vit-base-patch16-224,
# facebook/deit-base-distilled-patch16-224, facebook/dinov2-small).
HUB_VIT = {'do_normalize': True, 'do_resize': True, 'image_mean': [0.5, 0.5, 0.5],
           'image_std': [0.5, 0.5, 0.5], 'resample': 2, 'size': 224,
           'feature_extractor_type': 'ViTFeatureExtractor'}
HUB_DEIT = {'crop_size': 224, 'do_center_crop': True, 'do_normalize': True, 'do_resize': True,
            'feature_extractor_type': 'DeiTFeatureExtractor',
            'image_mean': [0.485, 0.456, 0.406], 'image_std': [0.229, 0.224, 0.225],
            'resample': 3, 'size': 256}
HUB_DINOV2 = {'crop_size': {'height': 224, 'width': 224}, 'do_center_crop': True,
              'do_convert_rgb': True, 'do_normalize': True, 'do_rescale': True,
              'do_resize': True, 'image_mean': [0.485, 0.456, 0.406],
              'image_processor_type': 'BitImageProcessor',
              'image_std': [0.229, 0.224, 0.225], 'resample': 3,
              'rescale_factor': 0.00392156862745098, 'size': {'shortest_edge': 256}}
HF_CLASSES = {'vit': ViTImageProcessorPil, 'deit': DeiTImageProcessorPil,
              'dinov2': BitImageProcessorPil}
HUB_CONFIGS = {'vit': HUB_VIT, 'deit': HUB_DEIT, 'dinov2': HUB_DINOV2}


# --- the same picture in every encoding (mirrors test_images.py) ---------------------------

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


def encoded(rgb: np.ndarray, encoding: str, pad: int = 0) -> tuple[ImageFrame, np.ndarray]:
    """(raw frame of `rgb` in `encoding` with `pad` bytes per row, RGB uint8 HF reference)."""
    channels, dtype, order = ENCODINGS[encoding]
    gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round()
    gray = gray.astype(np.uint8)[..., None]  # (H, W, 1)
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    pixels = {'rgb': rgb, 'bgr': rgb[..., ::-1], 'rgba': np.concatenate([rgb, alpha], -1),
              'bgra': np.concatenate([rgb[..., ::-1], alpha], -1), 'mono': gray}[order]
    reference = np.repeat(gray, 3, -1) if order == 'mono' else rgb
    if dtype.itemsize == 2:
        pixels = pixels.astype('<u2') * 257  # same intensities as the 8-bit picture
    rows = np.ascontiguousarray(pixels).reshape(rgb.shape[0], -1).view(np.uint8)
    data = np.zeros((rows.shape[0], rows.shape[1] + pad), np.uint8)
    data[:, :rows.shape[1]] = rows
    frame = ImageFrame(stamp_ns=1, frame_id='cam', data=data.tobytes(), height=rgb.shape[0],
                       width=rgb.shape[1], encoding=encoding, step=data.shape[1])
    return frame, reference


def hf_reference(name: str, images: list[np.ndarray], hub: dict | None = None) -> torch.Tensor:
    processor = HF_CLASSES[name](**(hub or {}))
    return torch.from_numpy(processor(images=images, return_tensors='np')['pixel_values'])


def ours(name: str, frames_or_images, hub: dict | None = None, float_path: bool = False,
         dtype=torch.float32) -> tuple[torch.Tensor, PreprocessConfig]:
    config = hub if hub is not None else HF_CLASSES[name]().to_dict()
    cfg = preprocess_config_from_hf(config)
    pre = Preprocessor(cfg, torch.device('cpu'), dtype, resample=resample_from_hf(config))
    if float_path:
        pre.resize_uint8 = False
    images = [f if isinstance(f, DecodedImage) else image_to_array(f) for f in frames_or_images]
    return pre(images), cfg


def levels(out: torch.Tensor, ref: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """|out - ref| in 8-bit levels, (N, 3, H, W)."""
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (out.float() - ref).abs() * std * 255


def assert_close_levels(out, ref, cfg, max_levels=MAX_LEVELS, mean_levels=MEAN_LEVELS):
    assert out.shape == ref.shape
    diff = levels(out, ref, cfg)
    assert diff.max().item() <= max_levels, diff.max().item()
    assert diff.mean().item() <= mean_levels, diff.mean().item()


# --- parity with HF --------------------------------------------------------------------------

@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('pad', [0, 10])
def test_every_encoding_matches_hf_vit(encoding, pad):
    frame, reference = encoded(picture(120, 160), encoding, pad)
    out, cfg = ours('vit', [frame])
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    tolerance = ((MAX_LEVELS_FLOAT, MEAN_LEVELS) if ENCODINGS[encoding][1].itemsize == 2
                 else (MAX_LEVELS, MEAN_LEVELS))  # 16-bit images take the float32 path
    assert_close_levels(out, hf_reference('vit', [reference]), cfg, *tolerance)


@pytest.mark.parametrize('name', ['vit', 'deit', 'dinov2'])
@pytest.mark.parametrize('size', [(480, 640), (640, 480), (487, 300), (300, 300), (37, 91)])
@pytest.mark.parametrize('float_path', [False, True])
def test_hub_configs_match_hf_for_non_square_sizes_and_crops(name, size, float_path):
    rgb = picture(*size, seed=3)
    frame, _ = encoded(rgb, 'bgr8', pad=4)
    hub = HUB_CONFIGS[name]
    out, cfg = ours(name, [frame], hub, float_path)
    upscale_bicubic = hub['resample'] == 3 and min(size) < 256
    tolerance = ((MAX_LEVELS_FLOAT, MEAN_LEVELS) if float_path else
                 (MAX_LEVELS_BICUBIC_UP if upscale_bicubic else MAX_LEVELS, MEAN_LEVELS))
    assert out.shape == (1, 3, 224, 224)
    assert_close_levels(out, hf_reference(name, [rgb], hub), cfg, *tolerance)


def test_shortest_edge_resize_rounds_like_hf():
    pre = Preprocessor(preprocess_config_from_hf(HUB_DINOV2), 'cpu', torch.float32)
    for height, width in ((480, 640), (487, 300), (300, 487), (37, 91), (1, 5000), (256, 256)):
        expected = get_resize_output_image_size(np.zeros((height, width, 3)), 256,
                                                default_to_square=False,
                                                input_data_format='channels_last')
        assert pre.resize_shape(height, width) == expected


@pytest.mark.parametrize('name', ['deit', 'dinov2'])
def test_default_processor_classes_match_hf(name):
    rgb = picture(240, 320, seed=5)
    out, cfg = ours(name, [DecodedImage(rgb, 'rgb')])
    assert_close_levels(out, hf_reference(name, [rgb]), cfg)


@pytest.mark.parametrize('encoding', ['mono16', '16UC1', 'rgb16', 'bgra16'])
def test_16_bit_matches_hf_on_the_8_bit_equivalent_image(encoding):
    # v16 = v8 * 257, so v16 / 65535 == v8 / 255: both pipelines see the same intensities.
    frame, reference = encoded(picture(96, 128, seed=7), encoding, pad=2)
    out, cfg = ours('vit', [frame])
    assert_close_levels(out, hf_reference('vit', [reference]), cfg, MAX_LEVELS_FLOAT,
                        MEAN_LEVELS)


def test_png_matches_hf_on_the_original_picture():
    rgb = picture(200, 260, seed=9)
    frame = ImageFrame(stamp_ns=1, frame_id='cam', format='png',
                       data=cv2.imencode('.png', rgb[..., ::-1])[1].tobytes())
    out, cfg = ours('deit', [frame], HUB_DEIT)
    assert_close_levels(out, hf_reference('deit', [rgb], HUB_DEIT), cfg, MAX_LEVELS_BICUBIC_UP)


def test_jpeg_matches_hf_on_the_decoded_pixels():
    rgb = picture(480, 640, seed=11)
    data = cv2.imencode('.jpg', rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    frame = ImageFrame(stamp_ns=1, frame_id='cam', format='rgb8; jpeg compressed bgr8',
                       data=data)
    decoded_rgb = np.ascontiguousarray(image_to_array(frame).pixels[..., ::-1])
    out, cfg = ours('vit', [frame])
    assert_close_levels(out, hf_reference('vit', [decoded_rgb]), cfg)


def test_cameras_of_different_sizes_in_one_batch():
    rgb_a, rgb_b, rgb_c = picture(480, 640, 1), picture(180, 320, 2), picture(64, 48, 3)
    frames = [encoded(rgb_a, 'rgb8')[0], encoded(rgb_b, 'bgr8', pad=8)[0],
              encoded(rgb_c, 'mono8')[0]]
    references = [rgb_a, rgb_b, encoded(rgb_c, 'mono8')[1]]

    batch, cfg = ours('dinov2', frames, HUB_DINOV2)

    assert batch.shape == (3, 3, 224, 224)
    for index, frame in enumerate(frames):
        single, _ = ours('dinov2', [frame], HUB_DINOV2)
        torch.testing.assert_close(batch[index:index + 1], single, rtol=0, atol=0)
    assert_close_levels(batch, hf_reference('dinov2', references, HUB_DINOV2), cfg,
                        MAX_LEVELS_BICUBIC_UP)


def test_crop_larger_than_the_resized_image_zero_pads_like_hf():
    hub = dict(HUB_DEIT, size={'height': 200, 'width': 180}, crop_size=224)
    rgb = picture(100, 150, seed=4)
    out, cfg = ours('deit', [DecodedImage(rgb, 'rgb')], hub)
    assert_close_levels(out, hf_reference('deit', [rgb], hub), cfg, MAX_LEVELS_BICUBIC_UP)
    padded = -torch.tensor(cfg.mean) / torch.tensor(cfg.std)  # pixel value 0, normalized
    torch.testing.assert_close(out[0, :, :12, 0], padded[:, None].expand(3, 12))


def test_bf16_output_is_the_float32_result_rounded():
    frame, _ = encoded(picture(120, 160), 'rgba8')
    full, _ = ours('vit', [frame])
    half, _ = ours('vit', [frame], dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device.type == 'cpu'
    torch.testing.assert_close(half.float(), full, rtol=2 ** -8, atol=0)


def test_same_size_input_is_not_resized():
    rgb = picture(224, 224)
    out, cfg = ours('vit', [DecodedImage(rgb, 'rgb')])
    expected = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-6)


def test_caller_views_with_negative_strides_are_accepted():
    rgb = picture(60, 80)
    flipped, cfg = ours('vit', [DecodedImage(rgb[..., ::-1], 'bgr')])
    plain, _ = ours('vit', [DecodedImage(rgb, 'rgb')])
    torch.testing.assert_close(flipped, plain, rtol=0, atol=0)


def test_empty_batch_and_bad_pixels():
    pre = Preprocessor(PreprocessConfig(size=[32, 48]), 'cpu', torch.float32)
    assert pre([]).shape == (0, 3, 32, 48)
    with pytest.raises(ImageError, match='expected \\(H, W, C\\) uint8 or uint16'):
        pre([DecodedImage(np.zeros((4, 4, 3), np.float32), 'rgb')])
    with pytest.raises(ImageError, match="channel_order='yuv'"):
        pre([DecodedImage(np.zeros((4, 4, 3), np.uint8), 'yuv')])


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 80), width=st.integers(1, 80),
       encoding=st.sampled_from(sorted(ENCODINGS)), seed=st.integers(0, 1000),
       out_h=st.integers(1, 40), out_w=st.integers(1, 40))
def test_any_image_gives_finite_values_in_the_normalized_range(height, width, encoding, seed,
                                                               out_h, out_w):
    cfg = PreprocessConfig(size=[out_h, out_w], mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4])
    frame, _ = encoded(picture(height, width, seed), encoding)
    out = Preprocessor(cfg, 'cpu', torch.float32)([image_to_array(frame)])
    assert out.shape == (1, 3, out_h, out_w)
    low = (0 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    high = (1 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    assert torch.isfinite(out).all()
    assert (out >= low.view(1, 3, 1, 1) - 1e-5).all()
    assert (out <= high.view(1, 3, 1, 1) + 1e-5).all()


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_matches_cpu():
    frames = [encoded(picture(480, 640, 1), 'bgr8', pad=8)[0],
              encoded(picture(120, 160, 2), 'mono16')[0]]
    images = [image_to_array(f) for f in frames]
    cfg = preprocess_config_from_hf(HUB_DINOV2)
    cpu = Preprocessor(cfg, 'cpu', torch.float32, resample='bicubic')(images)
    gpu = Preprocessor(cfg, 'cuda', torch.float32, resample='bicubic')
    for _ in range(3):  # reuses the pinned staging buffers
        out = gpu(images)
        assert out.device.type == 'cuda'
        assert_close_levels(out.cpu(), cpu, cfg, MAX_LEVELS_FLOAT, MEAN_LEVELS)


# --- HF config -> PreprocessConfig -----------------------------------------------------------

@pytest.mark.parametrize('hub, size, edge, crop, mean, resample', [
    (HUB_VIT, [224, 224], 0, [], [0.5, 0.5, 0.5], 'bilinear'),
    (HUB_DEIT, [256, 256], 0, [224, 224], [0.485, 0.456, 0.406], 'bicubic'),
    (HUB_DINOV2, [256, 256], 256, [224, 224], [0.485, 0.456, 0.406], 'bicubic'),
    ({'image_processor_type': 'BitImageProcessor', 'size': 256}, [256, 256], 256, [224, 224],
     [0.48145466, 0.4578275, 0.40821073], 'bicubic'),
    ({'image_processor_type': 'ViTImageProcessorPil', 'size': {'height': 384, 'width': 320},
      'image_mean': 0.25, 'image_std': 0.5}, [384, 320], 0, [], [0.25] * 3, 'bilinear'),
    ({'image_processor_type': 'DeiTImageProcessor', 'do_center_crop': False}, [256, 256], 0, [],
     [0.5] * 3, 'bicubic'),
])
def test_config_from_hub_json(hub, size, edge, crop, mean, resample):
    cfg = preprocess_config_from_hf(hub)
    assert (cfg.size, cfg.shortest_edge, cfg.crop_size) == (size, edge, crop)
    assert cfg.mean == pytest.approx(mean)
    assert resample_from_hf(hub) == resample


def test_processor_to_dict_round_trips_for_every_class():
    for name, expected in (('vit', (224, 224)), ('deit', (224, 224)), ('dinov2', (224, 224))):
        processor = HF_CLASSES[name]()
        cfg = preprocess_config_from_hf(processor.to_dict())
        assert cfg.output_size == expected
        assert cfg.std == pytest.approx(list(processor.image_std))


def test_rescale_factor_and_do_normalize_are_folded_into_mean_std():
    hub = dict(HUB_VIT, do_rescale=False, image_mean=[127.5, 100.0, 60.0],
               image_std=[60.0, 70.0, 80.0])
    rgb = picture(90, 120)
    out, cfg = ours('vit', [DecodedImage(rgb, 'rgb')], hub)
    assert cfg.mean == pytest.approx([0.5, 100 / 255, 60 / 255])
    assert_close_levels(out, hf_reference('vit', [rgb], hub), cfg)

    plain = preprocess_config_from_hf(dict(HUB_VIT, do_normalize=False))
    assert (plain.mean, plain.std) == ([0.0] * 3, [1.0] * 3)


@pytest.mark.parametrize('hub, expected', [
    (dict(HUB_VIT, do_resize=False), 'do_resize=false: expected a resize'),
    (dict(HUB_VIT, size={'shortest_edge': 224, 'longest_edge': 448}), 'size='),
    (dict(HUB_DEIT, crop_size={'width': 3}), 'crop_size='),
    (dict(HUB_VIT, rescale_factor=0), 'rescale_factor=0.0: expected a number > 0'),
])
def test_unsupported_hf_configs_raise_config_error(hub, expected):
    with pytest.raises(ConfigError, match=expected.replace('(', '\\(')):
        preprocess_config_from_hf(hub)


def test_bad_resample_and_shortest_edge_without_crop_raise_config_error():
    with pytest.raises(ConfigError, match='resample=1: expected 2 \\(bilinear\\) or 3'):
        resample_from_hf(dict(HUB_VIT, resample=1))
    with pytest.raises(ConfigError, match="resample='nearest'"):
        Preprocessor(PreprocessConfig(), 'cpu', torch.float32, resample='nearest')
    with pytest.raises(ConfigError, match='shortest_edge=256 without crop_size'):
        Preprocessor(PreprocessConfig(shortest_edge=256), 'cpu', torch.float32)
