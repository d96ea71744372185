"""Per family, the preprocessing a pretrained directory gets equals what transformers' own image
processor for that family does: settings (size, crop, mean/std, rescale, resample) and pixels.

Pixels are compared in 8-bit levels (1 level = 1 / (255 * std) after normalization); the
Preprocessor reproduces the PIL backend within 1 level (see test/core/test_preprocess.py).
"""

import json

import numpy as np
import pytest
import torch
import transformers

from vit_perception.core.images import DecodedImage
from vit_perception.core.preprocess import Preprocessor, preprocess_config_from_hf
from vit_perception.errors import ConfigError
from vit_perception.model.backbone import hf_image_processor
from vit_perception.model.config import PreprocessConfig, tiny_config
from vit_perception.model.policy import build_policy

SIZES = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
             image_size=32, patch_size=8)
MAX_LEVELS, MEAN_LEVELS = 1.05, 0.35

# family -> (HF model, its image processor class (PIL backend), the class defaults we expect:
# size, shortest edge, crop, mean, resample)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
FAMILIES = {
    'vit': (transformers.ViTModel(transformers.ViTConfig(**SIZES)),
            transformers.ViTImageProcessorPil, ([224, 224], 0, [], [0.5] * 3, 'bilinear')),
    'deit': (transformers.DeiTModel(transformers.DeiTConfig(**SIZES)),
             transformers.DeiTImageProcessorPil,
             ([256, 256], 0, [224, 224], [0.5] * 3, 'bicubic')),
    'dinov2': (transformers.Dinov2Model(transformers.Dinov2Config(**SIZES)),
               transformers.BitImageProcessorPil,
               ([224, 224], 224, [224, 224], CLIP_MEAN, 'bicubic')),
    'clip': (transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**SIZES)),
             transformers.CLIPImageProcessorPil,
             ([224, 224], 224, [224, 224], CLIP_MEAN, 'bicubic')),
    'siglip': (transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIZES)),
               transformers.SiglipImageProcessorPil,
               ([224, 224], 0, [], [0.5] * 3, 'bicubic')),
    'beit': (transformers.BeitModel(transformers.BeitConfig(**SIZES)),
             transformers.BeitImageProcessorPil, ([224, 224], 0, [], [0.5] * 3, 'bicubic')),
    'data2vec-vision': (transformers.Data2VecVisionModel(transformers.Data2VecVisionConfig(
        **SIZES)), transformers.BeitImageProcessorPil,
        ([224, 224], 0, [], [0.5] * 3, 'bicubic')),
    'dpt': (transformers.DPTModel(transformers.DPTConfig(**SIZES)),
            transformers.DPTImageProcessorPil, ([384, 384], 0, [], [0.5] * 3, 'bicubic')),
}
# what a small hub-style preprocessor_config.json sets per family (the rest: class defaults)
SMALL = {'vit': {'size': {'height': 40, 'width': 48}},
         'deit': {'size': {'height': 44, 'width': 44}, 'crop_size': {'height': 32, 'width': 32}},
         'dinov2': {'size': {'shortest_edge': 40}, 'crop_size': {'height': 32, 'width': 32},
                    'image_mean': [0.485, 0.456, 0.406], 'image_std': [0.229, 0.224, 0.225]},
         'clip': {'size': {'shortest_edge': 36}, 'crop_size': {'height': 32, 'width': 32}},
         'siglip': {'size': {'height': 32, 'width': 32}},
         'beit': {'size': {'height': 32, 'width': 32}},
         'data2vec-vision': {'size': {'height': 36, 'width': 36}, 'do_center_crop': True,
                             'crop_size': {'height': 32, 'width': 32}},
         'dpt': {'size': {'height': 32, 'width': 32}}}


def picture(height=90, width=120, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * xx / (width - 1), 255 * yy / (height - 1),
                    np.where((xx // 12 + yy // 12) % 2 == 0, 220.0, 30.0)], -1)
    return (rgb + rng.normal(0, 6, rgb.shape)).clip(0, 255).astype(np.uint8)


def assert_same_pixels(processor, cfg: PreprocessConfig, images):
    ours = Preprocessor(cfg, 'cpu', torch.float32)([DecodedImage(i, 'rgb') for i in images])
    hf = torch.from_numpy(processor(images=images, return_tensors='np')['pixel_values'])
    assert ours.shape == hf.shape
    levels = (ours - hf).abs() * torch.tensor(cfg.std).view(1, 3, 1, 1) * 255
    assert levels.max().item() <= MAX_LEVELS, levels.max().item()
    assert levels.mean().item() <= MEAN_LEVELS, levels.mean().item()


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_class_defaults_are_transformers_own(family):
    """A preprocessor_config.json naming only its class gets that class's defaults."""
    _, processor_class, (size, edge, crop, mean, resample) = FAMILIES[family]
    name = processor_class.__name__.removesuffix('Pil')
    from_name = preprocess_config_from_hf({'image_processor_type': name})
    from_class = preprocess_config_from_hf(processor_class().to_dict())
    assert from_name == from_class
    assert (from_class.size, from_class.shortest_edge, from_class.crop_size) == (size, edge, crop)
    assert from_class.mean == pytest.approx(mean)
    assert from_class.std == pytest.approx(list(processor_class().image_std))
    assert from_class.resample == resample


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_pretrained_directory_preprocesses_like_its_hf_processor(family, tmp_path):
    """A hub-style preprocessor_config.json (only some keys, no resample): loading the model
    directory through the policy fills in the rest from transformers' class, and our pixels
    equal the HF processor's."""
    model, processor_class, (_, _, _, _, resample) = FAMILIES[family]
    model.save_pretrained(tmp_path)
    written = {'image_processor_type': processor_class.__name__.removesuffix('Pil'),
               **SMALL[family]}
    (tmp_path / 'preprocessor_config.json').write_text(json.dumps(written))
    config = tiny_config(backbone__pretrained=str(tmp_path))
    build_policy(config)
    assert config.preprocess.resample == resample  # the class default, not in the file
    assert config.preprocess.output_size == ((40, 48) if family == 'vit' else (32, 32))
    reference = processor_class(**SMALL[family])
    assert_same_pixels(reference, config.preprocess, [picture(), picture(70, 50, 1)])


@pytest.mark.parametrize('preprocess', [
    PreprocessConfig(size=[40, 48]),
    PreprocessConfig(size=[96, 96], crop_size=[64, 64], mean=[0.4, 0.5, 0.6],
                     std=[0.2, 0.3, 0.25]),
    PreprocessConfig(size=[48, 48], shortest_edge=48, crop_size=[40, 40], resample='bicubic'),
])
def test_written_processor_round_trips_and_preprocesses_alike(preprocess, tmp_path):
    processor = hf_image_processor(preprocess)
    processor.save_pretrained(tmp_path)
    loaded = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend='pil')
    back = preprocess_config_from_hf(loaded.to_dict())
    assert (back.size, back.shortest_edge, back.crop_size, back.resample) == (
        preprocess.size, preprocess.shortest_edge, preprocess.crop_size, preprocess.resample)
    assert back.mean == pytest.approx(preprocess.mean)
    assert back.std == pytest.approx(preprocess.std)
    assert_same_pixels(loaded, back, [picture(), picture(120, 100, 2)])


@pytest.mark.parametrize('setting', [{'keep_aspect_ratio': True}, {'ensure_multiple_of': 32},
                                     {'do_pad': True}])
def test_dpt_aspect_ratio_and_padding_are_refused(setting):
    with pytest.raises(ConfigError, match='keep_aspect_ratio/ensure_multiple_of/do_pad'):
        preprocess_config_from_hf(transformers.DPTImageProcessorPil(**setting).to_dict())
