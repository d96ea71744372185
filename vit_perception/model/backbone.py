"""ViT-family backbones from `transformers`, behind one small adapter.

Three ways in: a local directory or hub id (`pretrained`), a stored HF config dict (checkpoints
rebuild from it, no network), or the sizes in BackboneConfig (random init, tests and scratch
training). ViT, DeiT and DINOv2 go through the same code; the adapter hides where each keeps its
encoder layers (transformers 5.x: `model.layers` for ViT/DeiT, `model.encoder.layer` for DINOv2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vit_perception.config import BackboneConfig
from vit_perception.errors import CheckpointError, ConfigError

PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.pkl', '.ckpt')


class Backbone(nn.Module):
    """Patch embedding, encoder layers and final norm of an HF ViT-family model, exposed apart.

    `embed` returns prefix tokens ([CLS], DeiT's distillation token, DINOv2 registers) followed by
    patch tokens, position embeddings added; `num_prefix_tokens` counts the former.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf_model = hf_model
        self.hidden_size: int = hf_model.config.hidden_size
        config = hf_model.config
        image_size = config.image_size
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        patch = config.patch_size
        self.num_patches = (self.image_size[0] // patch) * (self.image_size[1] // patch)
        with torch.no_grad():
            dummy = torch.zeros(1, config.num_channels, *self.image_size)
            self.num_prefix_tokens = self.embed(dummy).shape[1] - self.num_patches

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

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, prefix + patches, D)."""
        return self.hf_model.embeddings(pixel_values)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run every encoder layer and the final norm over (B, T, D) tokens."""
        for layer in self.layers:
            out = layer(tokens, None)
            tokens = out[0] if isinstance(out, tuple) else out
        return self.hf_model.layernorm(tokens)


def build_backbone(cfg: BackboneConfig) -> tuple[Backbone, dict]:
    """Build the backbone; returns it and the HF image-processor config dict ({} if none).

    Fills `cfg.hf_config` so a checkpoint can rebuild the same architecture offline.
    """
    import transformers

    processor_config: dict = {}
    if cfg.hf_config:
        hf_config = _config_from_dict(cfg.hf_config)
        model = transformers.AutoModel.from_config(hf_config)
    elif cfg.pretrained:
        model, processor_config = _load_pretrained(cfg.pretrained)
    else:
        model = transformers.AutoModel.from_config(_config_from_sizes(cfg))
    _remove_pooler(model)
    cfg.hf_config = model.config.to_dict()
    return Backbone(model), processor_config


def _config_from_sizes(cfg: BackboneConfig):
    import transformers

    kwargs = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_heads,
                  intermediate_size=cfg.hidden_size * cfg.mlp_ratio, patch_size=cfg.patch_size,
                  image_size=cfg.image_size)
    if cfg.model_type == 'dinov2':
        return transformers.Dinov2Config(mlp_ratio=cfg.mlp_ratio, **kwargs)
    if cfg.model_type == 'deit':
        return transformers.DeiTConfig(**kwargs)
    return transformers.ViTConfig(**kwargs)


def _config_from_dict(data: dict):
    import transformers

    model_type = data.get('model_type')
    if not model_type:
        raise CheckpointError('backbone.hf_config has no model_type: the checkpoint config is '
                              'incomplete; re-save it with this version')
    kwargs = {k: v for k, v in data.items() if k not in ('model_type', 'transformers_version')}
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def _load_pretrained(name: str):
    """A local directory (config.json + *.safetensors) or a hub id; safetensors only."""
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
        model = transformers.AutoModel.from_pretrained(name, use_safetensors=True)
    except OSError as err:
        raise CheckpointError(f'cannot load backbone {name!r}: {str(err).splitlines()[0]} '
                              '(no network? give a local directory)') from None
    processor_config = {}
    try:
        from transformers.image_processing_utils import ImageProcessingMixin

        processor_config, _ = ImageProcessingMixin.get_image_processor_dict(name)
    except (OSError, ValueError):
        pass  # no preprocessor_config.json: keep the PreprocessConfig defaults
    return model, processor_config


def _remove_pooler(model: nn.Module) -> None:
    """The policy pools tokens itself; drop HF's pooler so its weights are not saved unused."""
    if getattr(model, 'pooler', None) is not None:
        model.pooler = None

