import pytest
import torch

from vit_perception.errors import CheckpointError
from vit_perception.model.backbone import build_backbone
from vit_perception.model.config import tiny_config


@pytest.mark.parametrize('model_type, prefix', [('vit', 1), ('deit', 2), ('dinov2', 1)])
def test_backbones_expose_prefix_tokens_layers_and_config(model_type, prefix):
    cfg = tiny_config(backbone__model_type=model_type).backbone
    backbone, processor = build_backbone(cfg)
    assert processor == {}
    assert backbone.num_prefix_tokens == prefix
    assert backbone.num_patches == 16  # (32 / 8) ** 2
    assert len(backbone.layers) == 2
    tokens = backbone.embed(torch.zeros(2, 3, 32, 32))
    assert tokens.shape == (2, prefix + 16, 32)
    assert backbone.encode(tokens).shape == tokens.shape
    assert cfg.hf_config['model_type'] == model_type
    assert backbone.hf_model.pooler is None if hasattr(backbone.hf_model, 'pooler') else True


def test_rebuild_from_stored_hf_config_gives_same_architecture():
    cfg = tiny_config(backbone__model_type='dinov2').backbone
    first, _ = build_backbone(cfg)
    again, _ = build_backbone(cfg)  # cfg.hf_config is now filled: rebuilt from it
    shapes = {k: v.shape for k, v in first.state_dict().items()}
    assert shapes == {k: v.shape for k, v in again.state_dict().items()}


def test_local_pretrained_directory_with_processor_config(tmp_path):
    import transformers

    hf = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / 'preprocessor_config.json').write_text(
        '{"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32},'
        ' "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}')
    cfg = tiny_config(backbone__pretrained=str(tmp_path)).backbone
    backbone, processor = build_backbone(cfg)
    assert processor['image_mean'] == [0.1, 0.2, 0.3]
    assert processor['resample'] == 2  # not in the file: ViTImageProcessor's default
    loaded = backbone.hf_model.embeddings.patch_embeddings.projection.weight
    assert torch.equal(loaded, hf.embeddings.patch_embeddings.projection.weight)


def test_pretrained_directory_with_only_pickle_weights_is_refused(tmp_path):
    (tmp_path / 'config.json').write_text('{"model_type": "vit"}')
    (tmp_path / 'pytorch_model.bin').write_bytes(b'not loaded')
    cfg = tiny_config(backbone__pretrained=str(tmp_path)).backbone
    with pytest.raises(CheckpointError, match='pickle weights are refused'):
        build_backbone(cfg)


def test_unknown_hub_id_without_network_is_one_line_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)  # read at import
    cfg = tiny_config(backbone__pretrained='nobody/no-such-model-xyz').backbone
    with pytest.raises(CheckpointError, match='cannot load backbone') as info:
        build_backbone(cfg)
    assert '\n' not in str(info.value)
