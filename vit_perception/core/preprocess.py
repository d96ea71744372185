"""Decoded images -> the normalized (N, 3, H, W) tensor a ViT expects, on the model's device.

Per image: numpy view -> torch (no copy) -> device (pinned staging + non_blocking on CUDA) ->
antialiased resize (uint8 where the device supports it, as PIL does) -> center crop -> channel
reorder on the small tensor (bgr -> rgb, drop alpha, mono -> 3 channels) -> one fused
rescale + normalize. Reproduces the HF image processors (PIL backend) within 1-2 8-bit levels;
see test/core/test_preprocess.py for the measured tolerances.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vit_perception.core.images import DecodedImage
from vit_perception.errors import ConfigError, ImageError
from vit_perception.model.config import PreprocessConfig

RESAMPLE_MODES = ('bilinear', 'bicubic')
# PIL.Image.Resampling values used in HF processor configs -> torch interpolate modes.
PIL_RESAMPLE = {2: 'bilinear', 3: 'bicubic'}

# Message buffers are read-only and we only ever read them, but torch.from_numpy warns about
# read-only arrays (once per process, from C++). Spend that one warning here, silenced.
with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    torch.from_numpy(np.frombuffer(b'\0', dtype=np.uint8))


class Preprocessor:
    """Batch of DecodedImage (any sizes, any channel order) -> (N, 3, H, W) tensor on `device`.

    `resample` ('bilinear' or 'bicubic') overrides `cfg.resample`.
    Not thread-safe (CUDA staging buffers): use one instance per inference thread.
    """

    def __init__(self, cfg: PreprocessConfig, device: torch.device | str = 'cpu',
                 dtype: torch.dtype = torch.float32, resample: str | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.resample = resample or cfg.resample
        if self.resample not in RESAMPLE_MODES:
            raise ConfigError(f'preprocess resample={self.resample!r}: expected one of '
                              f'{RESAMPLE_MODES}')
        if cfg.shortest_edge > 0 and not cfg.crop_size:
            raise ConfigError(f'preprocess.shortest_edge={cfg.shortest_edge} without crop_size: '
                              'expected a crop_size so every image ends at one size')
        self.output_size = tuple(int(v) for v in cfg.output_size)
        mean = torch.tensor(cfg.mean, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, dtype=torch.float64).view(1, 3, 1, 1)
        # Rescale (1/255 or 1/65535) and normalize folded into one multiply-add: x * s + b.
        self._scale = {bits: (1.0 / (maxval * std)).float().to(self.device)
                       for bits, maxval in ((8, 255.0), (16, 65535.0))}
        self._bias = (-mean / std).float().to(self.device)
        # True where the device resizes uint8 directly (CPU: faster, and rounds like PIL);
        # otherwise 8-bit images are resized in float32.
        self.resize_uint8 = _supports_uint8_resize(self.device, self.resample)
        self._cuda = self.device.type == 'cuda'
        # CUDA only: per batch position, a pinned host buffer and the event of its last copy.
        self._staging: dict[int, tuple[torch.Tensor, torch.cuda.Event]] = {}

    def resize_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, before cropping (HF rounding rules)."""
        edge = self.cfg.shortest_edge
        if edge <= 0:
            return int(self.cfg.size[0]), int(self.cfg.size[1])
        if width <= height:
            return int(edge * height / width), edge
        return edge, int(edge * width / height)

    def __call__(self, images: Sequence[DecodedImage]) -> torch.Tensor:
        return self.transform(self.upload(images))

    def upload(self, images: Sequence[DecodedImage]) -> list[tuple[torch.Tensor, str, int]]:
        """Host -> device, one copy per image: [(pixels (H, W, C) on device, order, bits)]."""
        uploaded = []
        for index, image in enumerate(images):
            pixels = image.pixels
            if pixels.ndim != 3 or pixels.dtype not in (np.uint8, np.uint16):
                raise ImageError(f'pixels {pixels.dtype} {pixels.shape}: expected (H, W, C) '
                                 'uint8 or uint16 from image_to_array')
            bits = 8 * pixels.dtype.itemsize
            if min(pixels.strides) < 0:
                pixels = np.ascontiguousarray(pixels)  # torch.from_numpy needs strides >= 0
            if bits == 16:
                pixels = pixels.view(np.int16)  # int16 is fully supported by torch; undone later
            device_pixels = self._to_device(index, torch.from_numpy(pixels))  # (H, W, C)
            uploaded.append((device_pixels, image.channel_order, bits))
        return uploaded

    def transform(self, uploaded: Sequence[tuple[torch.Tensor, str, int]]) -> torch.Tensor:
        """Uploaded images -> the normalized (N, 3, H, W) batch in the model dtype."""
        out = torch.empty((len(uploaded), 3, *self.output_size), device=self.device,
                          dtype=self.dtype)  # (N, 3, H, W)
        for index, (pixels, order, bits) in enumerate(uploaded):
            out[index] = self._one(pixels, order, bits)[0]
        return out

    def _one(self, pixels: torch.Tensor, order: str, bits: int) -> torch.Tensor:
        x = pixels.permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)
        if bits == 16:
            x = x.to(torch.int32).bitwise_and_(0xFFFF).float()
        elif not self.resize_uint8:
            x = x.float()
        x = self._resize(x, 255.0 if bits == 8 else 65535.0)
        x = _center_crop(x, self.output_size) if self.cfg.crop_size else x
        x = _to_rgb(x, order)  # (1, 3, H, W)
        return torch.addcmul(self._bias, x.float(), self._scale[bits])  # (1, 3, H, W) float32

    def _to_device(self, index: int, host: torch.Tensor) -> torch.Tensor:
        if not self._cuda:
            return host.to(self.device)
        staging, done = self._staging.get(index, (None, None))
        if done is not None:
            done.synchronize()  # the previous copy out of this camera's buffer has finished
        if staging is None or staging.shape != host.shape or staging.dtype != host.dtype:
            staging = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        staging.copy_(host)  # the one host copy: message buffer -> pinned (padding dropped)
        moved = staging.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._staging[index] = (staging, done)
        return moved

    def _resize(self, x: torch.Tensor, maxval: float) -> torch.Tensor:
        size = self.resize_shape(x.shape[-2], x.shape[-1])
        if tuple(x.shape[-2:]) == size:
            return x
        x = F.interpolate(x, size=size, mode=self.resample, antialias=True, align_corners=False)
        if x.is_floating_point():
            x = x.clamp_(0.0, maxval)  # bicubic overshoot; PIL clamps to the pixel range
        return x


def _supports_uint8_resize(device: torch.device, mode: str) -> bool:
    probe = torch.zeros((1, 3, 8, 8), dtype=torch.uint8, device=device)
    try:
        F.interpolate(probe, size=(4, 4), mode=mode, antialias=True, align_corners=False)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """HF center crop: offset (n - c) // 2; zero-pads (pixel value 0) when the image is smaller."""
    height, width = x.shape[-2:]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    if top >= 0 and left >= 0:
        return x[..., top:top + size[0], left:left + size[1]]
    # F.pad crops where a pad is negative; pads (left, right, top, bottom).
    return F.pad(x, (-left, size[1] - width + left, -top, size[0] - height + top))


def _to_rgb(x: torch.Tensor, order: str) -> torch.Tensor:
    """(1, C, H, W) in `order` -> (1, 3, H, W) RGB."""
    if order in ('rgb', 'rgba'):
        return x[:, :3]
    if order in ('bgr', 'bgra'):
        return x[:, :3].flip(1)
    if order == 'mono':
        return x[:, :1].expand(-1, 3, -1, -1)
    raise ImageError(f'channel_order={order!r}: expected rgb, bgr, rgba, bgra or mono')


# ------------------------------------------------------------------------------------------
# HF image processor configs (preprocessor_config.json) -> PreprocessConfig
# ------------------------------------------------------------------------------------------

_IMAGENET_STANDARD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
_OPENAI_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
# Class defaults for keys a config may omit: (size, crop_size, mean/std, resample, int size
# means shortest edge). Unknown types get the ViT defaults (also HF's base defaults).
_TYPE_DEFAULTS = {
    'ViTImageProcessor': ({'height': 224, 'width': 224}, None, _IMAGENET_STANDARD, 2, False),
    'DeiTImageProcessor': ({'height': 256, 'width': 256}, {'height': 224, 'width': 224},
                           _IMAGENET_STANDARD, 3, False),
    'BitImageProcessor': ({'shortest_edge': 224}, {'height': 224, 'width': 224}, _OPENAI_CLIP,
                          3, True),
    'CLIPImageProcessor': ({'shortest_edge': 224}, {'height': 224, 'width': 224}, _OPENAI_CLIP,
                           3, True),
    # BEiT / Data2Vec-vision (transformers 5: no centre crop by default), SigLIP, DPT
    'BeitImageProcessor': ({'height': 224, 'width': 224}, None, _IMAGENET_STANDARD, 3, False),
    'SiglipImageProcessor': ({'height': 224, 'width': 224}, None, _IMAGENET_STANDARD, 3, True),
    'DPTImageProcessor': ({'height': 384, 'width': 384}, None, _IMAGENET_STANDARD, 3, False),
}


def _processor_type(config: dict) -> str:
    name = str(config.get('image_processor_type') or config.get('feature_extractor_type') or '')
    name = name.replace('FeatureExtractor', 'ImageProcessor')
    for suffix in ('Pil', 'Fast'):
        name = name.removesuffix(suffix)
    return name


def _hw(value, where: str, int_is_shortest_edge: bool) -> tuple[list[int], int]:
    """HF size/crop_size (int or dict) -> ([height, width], shortest_edge)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ([value, value], value) if int_is_shortest_edge else ([value, value], 0)
    if isinstance(value, dict):
        if set(value) == {'height', 'width'}:
            return [int(value['height']), int(value['width'])], 0
        if set(value) == {'shortest_edge'}:
            edge = int(value['shortest_edge'])
            return [edge, edge], edge
    raise ConfigError(f'HF processor {where}={value!r}: expected an int, {{"height", "width"}} '
                      'or {"shortest_edge"}')


def preprocess_config_from_hf(processor_config: dict) -> PreprocessConfig:
    """Read size, center crop, mean/std (and rescale factor) from an HF image processor config.

    Handles ViTImageProcessor, DeiTImageProcessor and BitImageProcessor (DINOv2) configs, in
    both the old int (`"size": 256`) and the dict forms. The resample filter goes into
    `PreprocessConfig.resample` (model/config.py); `resample_from_hf` reads it too.
    """
    kind = _processor_type(processor_config)
    size0, crop0, (mean0, std0), _, int_is_edge = _TYPE_DEFAULTS.get(
        kind, _TYPE_DEFAULTS['ViTImageProcessor'])
    get = processor_config.get
    if not get('do_resize', True):
        raise ConfigError('HF processor do_resize=false: expected a resize to a fixed size '
                          '(the model needs one input size)')
    if get('keep_aspect_ratio') or get('do_pad') or get('ensure_multiple_of') not in (None, 1):
        raise ConfigError('HF processor keep_aspect_ratio/ensure_multiple_of/do_pad (DPT): '
                          'expected a resize to one fixed size; set them off in '
                          'preprocessor_config.json')
    size, shortest_edge = _hw(get('size', size0), 'size', int_is_edge)
    crop_size: list[int] = []
    crop = get('crop_size', crop0)
    if get('do_center_crop', crop0 is not None) and crop is not None:
        crop_size, _ = _hw(crop, 'crop_size', False)
    mean, std = get('image_mean', mean0), get('image_std', std0)
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(v) for v in mean]
    std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
    if not get('do_normalize', True):
        mean, std = [0.0] * 3, [1.0] * 3
    # (x * r - m) / s == (x / 255 - m') / s' with m' = m / (255 r), s' = s / (255 r).
    rescale = float(get('rescale_factor', 1 / 255)) if get('do_rescale', True) else 1.0
    if not rescale > 0 or not math.isfinite(rescale):
        raise ConfigError(f'HF processor rescale_factor={rescale!r}: expected a number > 0')
    factor = 255.0 * rescale
    if abs(factor - 1.0) > 1e-9:
        mean = [m / factor for m in mean]
        std = [s / factor for s in std]
    return PreprocessConfig(size=size, shortest_edge=shortest_edge, crop_size=crop_size,
                            mean=mean, std=std, resample=resample_from_hf(processor_config))


def resample_from_hf(processor_config: dict) -> str:
    """The torch interpolate mode ('bilinear' or 'bicubic') of an HF image processor config."""
    default = _TYPE_DEFAULTS.get(_processor_type(processor_config),
                                 _TYPE_DEFAULTS['ViTImageProcessor'])[3]
    value = processor_config.get('resample', default)
    mode = PIL_RESAMPLE.get(value if isinstance(value, int) else -1)
    if mode is None:
        raise ConfigError(f'HF processor resample={value!r}: expected 2 (bilinear) or 3 (bicubic)')
    return mode
