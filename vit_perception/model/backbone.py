"""ViT-family backbones from `transformers`, behind one small adapter.

Three ways in: a local directory or hub id (`pretrained`), a stored HF config dict (checkpoints
rebuild from it, no network), or the sizes in BackboneConfig (random init, tests and scratch
training). Families (`FAMILIES`): ViT, DeiT, DINOv2 (+ registers), CLIP and SigLIP vision towers
(also taken out of a full CLIP / SigLIP checkpoint), BEiT (v1 and v2 layouts), Data2Vec-vision
and DPT's ViT encoder. Hierarchical models (Swin, ...) are refused: they have no flat token
sequence that pose tokens could join.

The adapter splits the model into `embed` (patches -> prefix + patch tokens) and `encode` (the
layers + final norm over any sequence `[non-patch tokens | patch tokens]`), so the policy can
insert pose tokens in between. Per family it reproduces what the HF forward does around the
layers: CLIP's pre-LayerNorm, the final norm (`layernorm`, CLIP/SigLIP `post_layernorm`,
BEiT/Data2Vec's pooler LayerNorm when `use_mean_pooling`), and BEiT/Data2Vec relative position
bias (`relative_bias.py`), which the adapter computes itself for the extended sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vit_perception.errors import CheckpointError, ConfigError
from vit_perception.model.config import BackboneConfig
from vit_perception.model.relative_bias import extend_relative_bias

PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.pkl', '.ckpt')

# HF model_type -> family (BackboneConfig.model_type names). Full CLIP / SigLIP checkpoints
# ('clip', 'siglip') load their vision tower only.
FAMILIES = {
    'vit': 'vit', 'deit': 'deit', 'dinov2': 'dinov2',
    'dinov2_with_registers': 'dinov2_with_registers',
    'clip': 'clip', 'clip_vision_model': 'clip',
    'siglip': 'siglip', 'siglip_vision_model': 'siglip',
    'beit': 'beit', 'data2vec-vision': 'data2vec-vision', 'dpt': 'dpt',
}
HIERARCHICAL = ('swin', 'swinv2', 'donut-swin', 'maskformer-swin', 'hiera', 'pvt', 'pvt_v2',
                'focalnet', 'dinat', 'nat', 'segformer', 'mobilevit', 'mobilevitv2', 'levit',
                'efficientformer', 'poolformer', 'cvt', 'convnext', 'convnextv2', 'resnet',
                'regnet', 'bit', 'efficientnet', 'mobilenet_v2', 'vitdet', 'hgnet_v2')


class Backbone(nn.Module):
    """Patch embedding, encoder layers and final norm of an HF ViT-family model, exposed apart.

    `embed` returns prefix tokens ([CLS], DeiT's distillation token, DINOv2 registers; none for
    SigLIP) followed by patch tokens, position embeddings added (interpolated when the image
    size differs from the config's); `num_prefix_tokens` counts the former.

    `feature_layer`: -1 reads the last layer, then the model's final norm (HF's
    `last_hidden_state`); -2 the second-to-last layer's output as is (HF's `hidden_states[-2]`,
    what VLA systems use); k >= 1 the output of layer k. Layers after it are not run.
    """

    def __init__(self, hf_model: nn.Module, feature_layer: int = -1):
        super().__init__()
        self.hf_model = hf_model
        config = hf_model.config
        self.family = family_of(config.model_type)
        self.hidden_size: int = config.hidden_size
        image_size = config.image_size
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(
            image_size)
        self.patch_size: int = config.patch_size
        self.grid_size = (self.image_size[0] // self.patch_size,
                          self.image_size[1] // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        total = len(self.layers)
        if not (-total <= feature_layer <= total) or feature_layer == 0:
            raise ConfigError(f'backbone.feature_layer={feature_layer}: this backbone has {total} '
                              f'layers; expected -{total}..-1 or 1..{total}')
        self.feature_layer = feature_layer
        self.num_layers_run = feature_layer if feature_layer > 0 else total + 1 + feature_layer
        if self.family == 'data2vec-vision':
            for layer in self.layers:  # the adapter adds this bias itself (extended sequence)
                layer.attention.attention.has_relative_position_bias = False
        with torch.no_grad():
            dummy = torch.zeros(1, config.num_channels, *self.image_size)
            self.num_prefix_tokens = self.embed(dummy).shape[1] - self.num_patches

    # -- where each family keeps its parts (looked up, never registered twice) ----------------

    @property
    def layers(self) -> nn.ModuleList:
        model = self.hf_model
        if isinstance(getattr(model, 'layers', None), nn.ModuleList):
            return model.layers
        encoder = getattr(model, 'encoder', None)
        for name in ('layer', 'layers'):
            if isinstance(getattr(encoder, name, None), nn.ModuleList):
                return getattr(encoder, name)
        raise ConfigError(f'{type(model).__name__}: cannot find its encoder layers '
                          '(expected .layers or .encoder.layer; tested with transformers 5.x)')

    @property
    def final_norm(self) -> nn.Module:
        model = self.hf_model
        if self.family in ('clip', 'siglip'):
            return model.post_layernorm
        if self.family in ('beit', 'data2vec-vision') and model.config.use_mean_pooling:
            return model.pooler.layernorm  # layernorm is Identity: the pooler holds the norm
        return model.layernorm

    def _relative_bias_modules(self, layer: nn.Module) -> list[nn.Module]:
        """The relative position bias tables that apply to `layer` (shared, then per layer)."""
        model, found = self.hf_model, []
        if self.family == 'beit':
            found = [model.shared_position_bias, layer.relative_position_bias]
        elif self.family == 'data2vec-vision':
            shared = getattr(model.encoder, 'relative_position_bias', None)
            found = [shared if model.encoder.has_relative_position_bias else None,
                     getattr(layer.attention.attention, 'relative_position_bias', None)]
        return [module for module in found if module is not None]

    # -- the two halves ------------------------------------------------------------------------

    def grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of patches for (..., H, W) pixels."""
        return pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, prefix + patches, D)."""
        interpolate = tuple(pixel_values.shape[-2:]) != self.image_size
        embeddings = self.hf_model.embeddings
        if self.family in ('vit', 'deit', 'clip', 'siglip'):
            return embeddings(pixel_values, interpolate_pos_encoding=interpolate)
        if self.family == 'data2vec-vision':
            return embeddings(pixel_values)[0]
        if self.family == 'dpt':
            return embeddings(pixel_values).last_hidden_states
        return embeddings(pixel_values)  # DINOv2 and BEiT interpolate by themselves

    def encode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, T, D) tokens laid out `[non-patch tokens | rows * columns patch tokens]` (the
        patch grid `grid`, default the config's) -> (B, T, D) features of `feature_layer`."""
        tokens = self.run_layers(tokens, grid, 0, self.num_layers_run)
        return self.final_norm(tokens) if self.feature_layer == -1 else tokens

    def run_layers(self, tokens: torch.Tensor, grid: tuple[int, int] | None, start: int,
                   stop: int) -> torch.Tensor:
        """Layers `start` .. `stop - 1` over (B, T, D) tokens (CLIP's pre-norm before layer 0)."""
        grid = grid or self.grid_size
        if self.family == 'clip' and start == 0:
            tokens = self.hf_model.pre_layrnorm(tokens)
        for layer in self.layers[start:stop]:
            if self.family == 'beit':
                tokens = self._beit_layer(layer, tokens, grid)
            elif self.family == 'data2vec-vision':
                tokens = layer(tokens, relative_position_bias=self._bias(layer, tokens, grid))[0]
            else:  # DPT's layers take no attention mask; CLIP's and SigLIP's require one
                out = layer(tokens) if self.family == 'dpt' else layer(tokens, None)
                tokens = out[0] if isinstance(out, tuple) else out
        return tokens

    # -- BEiT / Data2Vec relative position bias ------------------------------------------------

    def _bias(self, layer: nn.Module, tokens: torch.Tensor, grid: tuple[int, int]):
        """Sum of the layer's relative position biases for `tokens`: (1, heads, T, T) or None."""
        biases = [module(grid) for module in self._relative_bias_modules(layer)]  # (1, h, G, G)
        if not biases:
            return None
        bias = biases[0] if len(biases) == 1 else biases[0] + biases[1]
        extra = tokens.shape[1] - grid[0] * grid[1] - 1  # non-patch tokens besides [CLS]
        return extend_relative_bias(bias, extra).to(tokens.dtype)

    def _beit_layer(self, layer: nn.Module, tokens: torch.Tensor, grid: tuple[int, int]):
        """BeitLayer.forward with the bias computed for the extended sequence (HF computes it
        for [CLS] + patches only, which crashes or misaligns with pose tokens)."""
        residual = tokens
        hidden, _ = layer.attention(layer.layernorm_before(tokens),
                                    attention_mask=self._bias(layer, tokens, grid))
        tokens = layer.drop_path(layer.lambda_1 * layer.dropout(hidden)) + residual
        hidden = layer.dropout(layer.mlp(layer.layernorm_after(tokens)))
        return layer.drop_path(layer.lambda_2 * hidden) + tokens


def family_of(model_type: str) -> str:
    """The family of an HF model_type; anything else is one ConfigError line."""
    family = FAMILIES.get(model_type)
    if family is not None:
        return family
    if model_type in HIERARCHICAL:
        raise ConfigError(
            f'backbone model_type {model_type!r} is hierarchical (stages of different token '
            'grids, windowed attention): there is no single token sequence for pose tokens to '
            f'join; use a plain ViT family: {sorted(set(FAMILIES.values()))}')
    raise ConfigError(f'backbone model_type {model_type!r} is not supported; supported ViT '
                      f'families: {sorted(set(FAMILIES.values()))}')


def build_backbone(cfg: BackboneConfig) -> tuple[Backbone, dict]:
    """Build the backbone; returns it and the HF image-processor config dict ({} if none).

    Fills `cfg.hf_config` so a checkpoint can rebuild the same architecture offline.
    """
    import transformers

    processor_config: dict = {}
    if cfg.hf_config:
        config = _config_from_dict(cfg.hf_config)
        model = transformers.AutoModel.from_config(config, **_model_kwargs(config))
    elif cfg.pretrained:
        model, processor_config = _load_pretrained(cfg.pretrained)
    else:
        model = transformers.AutoModel.from_config(_config_from_sizes(cfg))
    _remove_pooler(model)
    cfg.hf_config = model.config.to_dict()
    return Backbone(model, cfg.feature_layer), processor_config


def _config_from_sizes(cfg: BackboneConfig):
    import transformers

    kwargs = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_heads,
                  intermediate_size=cfg.hidden_size * cfg.mlp_ratio, patch_size=cfg.patch_size,
                  image_size=cfg.image_size)
    kind = cfg.model_type
    if kind == 'dinov2':
        return transformers.Dinov2Config(mlp_ratio=cfg.mlp_ratio, **kwargs)
    if kind == 'dinov2_with_registers':
        return transformers.Dinov2WithRegistersConfig(mlp_ratio=cfg.mlp_ratio, **kwargs)
    if kind == 'deit':
        return transformers.DeiTConfig(**kwargs)
    if kind == 'clip':
        return transformers.CLIPVisionConfig(**kwargs)
    if kind == 'siglip':
        return transformers.SiglipVisionConfig(vision_use_head=False, **kwargs)
    if kind in ('beit', 'data2vec-vision'):
        # BEiT v2's pre-training layout: relative position bias shared by all layers, no
        # absolute position embeddings, a final LayerNorm (no mean pooling), layer scale 0.1.
        config_class = (transformers.BeitConfig if kind == 'beit'
                        else transformers.Data2VecVisionConfig)
        return config_class(use_shared_relative_position_bias=True,
                            use_absolute_position_embeddings=False, use_mean_pooling=False,
                            **kwargs)
    if kind == 'dpt':
        return transformers.DPTConfig(**kwargs)
    return transformers.ViTConfig(**kwargs)


def _config_from_dict(data: dict):
    import transformers

    model_type = data.get('model_type')
    if not model_type:
        raise CheckpointError('backbone.hf_config has no model_type: the checkpoint config is '
                              'incomplete; re-save it with this version')
    _check_config(model_type, data)
    kwargs = {k: v for k, v in data.items() if k not in ('model_type', 'transformers_version')}
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def _check_config(model_type: str, data: dict) -> None:
    """Refuse what the adapter cannot run, before any weights load."""
    family_of(model_type)
    if model_type == 'dpt' and data.get('is_hybrid'):
        raise ConfigError('DPT hybrid (a BiT CNN stem before the ViT) is not supported: use a '
                          'plain DPT (is_hybrid=false)')


def _model_kwargs(config) -> dict:
    """Data2VecVisionModel leaves out the pooler by default; with `use_mean_pooling` the
    pooler's LayerNorm is the final norm, so it must be built (and its weights loaded)."""
    if config.model_type == 'data2vec-vision' and config.use_mean_pooling:
        return {'add_pooling_layer': True}
    return {}


def _load_pretrained(name: str):
    """A local directory (config.json + *.safetensors) or a hub id; safetensors only.

    A full CLIP / SigLIP checkpoint (model_type 'clip' / 'siglip') loads its vision tower.
    """
    import transformers

    path = Path(name)
    if path.exists():
        if not (path / 'config.json').is_file():
            raise CheckpointError(f'{path}: no config.json; expected a Hugging Face model '
                                  'directory (config.json + model.safetensors)')
        if not list(path.glob('*.safetensors')):
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            raise CheckpointError(
                f'{path}: no *.safetensors weights (found {pickles or "none"}); pickle weights '
                'are refused: convert them to safetensors first')
    try:
        config = transformers.AutoConfig.from_pretrained(name)
        _check_config(config.model_type, config.to_dict())
        model_class = {'clip': transformers.CLIPVisionModel,
                       'siglip': transformers.SiglipVisionModel}.get(
                           config.model_type, transformers.AutoModel)
        model = model_class.from_pretrained(name, use_safetensors=True, **_model_kwargs(config))
    except OSError as err:
        raise CheckpointError(f'cannot load backbone {name!r}: {str(err).splitlines()[0]} '
                              '(no network? give a local directory)') from None
    return model, _image_processor_config(name)


def _image_processor_config(name: str) -> dict:
    """The settings of the model's HF image processor, as transformers' own class fills them in
    (its class defaults included: a `preprocessor_config.json` may omit size, resample, ...);
    {} when the model has none (the recipe's preprocessing is kept)."""
    import transformers
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        ImageProcessingMixin.get_image_processor_dict(name)
    except (OSError, ValueError):
        return {}  # no preprocessor_config.json
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(name, backend='pil')
    except (OSError, ValueError, ImportError) as err:
        raise CheckpointError(f'{name}: cannot read its preprocessor_config.json '
                              f'({str(err).splitlines()[0]})') from None
    return json.loads(processor.to_json_string())  # plain JSON types (lists, not tuples)


def hf_image_processor(preprocess):
    """The HF image processor (PIL backend) that preprocesses like `preprocess`, for writing a
    `preprocessor_config.json` next to a model: ViT (resize), DeiT (resize + centre crop) or
    BiT (shortest edge + centre crop)."""
    import transformers

    from vit_perception.core.preprocess import PIL_RESAMPLE

    common = dict(resample={mode: code for code, mode in PIL_RESAMPLE.items()}[
        preprocess.resample], image_mean=list(preprocess.mean), image_std=list(preprocess.std),
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True)
    height, width = preprocess.size
    crop = ({'height': preprocess.crop_size[0], 'width': preprocess.crop_size[1]}
            if preprocess.crop_size else None)
    if preprocess.shortest_edge:
        return transformers.BitImageProcessorPil(
            size={'shortest_edge': preprocess.shortest_edge}, crop_size=crop,
            do_center_crop=True, **common)
    if crop:
        return transformers.DeiTImageProcessorPil(
            size={'height': height, 'width': width}, crop_size=crop, do_center_crop=True,
            **common)
    return transformers.ViTImageProcessorPil(size={'height': height, 'width': width}, **common)


def _remove_pooler(model: nn.Module) -> None:
    """The policy pools tokens itself; drop HF's pooler (and SigLIP's attention-pooling head) so
    their weights are not saved unused. BEiT/Data2Vec with `use_mean_pooling` keep the pooler:
    its LayerNorm is the model's final norm."""
    if getattr(model.config, 'use_mean_pooling', False):
        return
    if getattr(model, 'pooler', None) is not None:
        model.pooler = None
    if getattr(model, 'head', None) is not None and family_of(model.config.model_type) == 'siglip':
        model.head = None
        model.use_head = False
