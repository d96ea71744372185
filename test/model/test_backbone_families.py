"""Per family: the adapter's tokens equal HF's own forward (tiny random-init configs).

Each reference model is saved as an HF directory and loaded back through `backbone.pretrained`,
so the loading path is checked too. Every parameter (also BEiT's zero-initialised relative
position tables and layer scales) is randomised first, so a dropped bias or norm shows.
"""

import pytest
import torch
import transformers

from vit_perception.errors import ConfigError
from vit_perception.model.backbone import build_backbone
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy
from vit_perception.model.relative_bias import extend_relative_bias

SIZES = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
             image_size=32, patch_size=8)
BEIT_SHARED = dict(use_shared_relative_position_bias=True, use_absolute_position_embeddings=False,
                   use_mean_pooling=False)
BEIT_PER_LAYER = dict(use_relative_position_bias=True, use_absolute_position_embeddings=True,
                      use_mean_pooling=True)

# name -> (HF model class, config); the reference forward is the class's own.
FAMILIES = {
    'vit': (transformers.ViTModel, transformers.ViTConfig(**SIZES)),
    'deit': (transformers.DeiTModel, transformers.DeiTConfig(**SIZES)),
    'dinov2': (transformers.Dinov2Model, transformers.Dinov2Config(**SIZES)),
    'dinov2_with_registers': (transformers.Dinov2WithRegistersModel,
                              transformers.Dinov2WithRegistersConfig(num_register_tokens=4,
                                                                     **SIZES)),
    'clip': (transformers.CLIPVisionModel, transformers.CLIPVisionConfig(**SIZES)),
    'siglip': (transformers.SiglipVisionModel, transformers.SiglipVisionConfig(**SIZES)),
    'beit_shared': (transformers.BeitModel, transformers.BeitConfig(**BEIT_SHARED, **SIZES)),
    'beit_per_layer_mean_pool': (transformers.BeitModel,
                                 transformers.BeitConfig(**BEIT_PER_LAYER, **SIZES)),
    'data2vec_shared': (transformers.Data2VecVisionModel,
                        transformers.Data2VecVisionConfig(**BEIT_SHARED, **SIZES)),
    'data2vec_per_layer_mean_pool': (transformers.Data2VecVisionModel,
                                     transformers.Data2VecVisionConfig(**BEIT_PER_LAYER,
                                                                       **SIZES)),
    'dpt': (transformers.DPTModel, transformers.DPTConfig(**SIZES)),
}
PREFIX = {'vit': 1, 'deit': 2, 'dinov2': 1, 'dinov2_with_registers': 5, 'clip': 1, 'siglip': 0,
          'beit_shared': 1, 'beit_per_layer_mean_pool': 1, 'data2vec_shared': 1,
          'data2vec_per_layer_mean_pool': 1, 'dpt': 1}


def randomised(model_class, config, seed=0):
    torch.manual_seed(seed)
    kwargs = {'add_pooling_layer': True} if model_class is transformers.Data2VecVisionModel else {}
    model = model_class(config, **kwargs).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model


def reference_tokens(name, model, pixels, **kwargs):
    """HF's forward; the per-token final norm where HF applies it only to the pooled output."""
    with torch.no_grad():
        out = model(pixel_values=pixels, **kwargs)
    tokens = out.last_hidden_state
    if name == 'clip':  # HF: post_layernorm on the pooled [CLS] only
        assert torch.allclose(model.post_layernorm(tokens)[:, 0], out.pooler_output, atol=1e-6)
        return model.post_layernorm(tokens)
    if name.endswith('mean_pool'):  # HF: the LayerNorm sits in the pooler, after the mean
        return model.pooler.layernorm(tokens)
    return tokens


def adapter_for(tmp_path, model, **backbone):
    model.save_pretrained(tmp_path)
    cfg = tiny_config(backbone__pretrained=str(tmp_path), **{
        f'backbone__{k}': v for k, v in backbone.items()}).backbone
    adapter, _ = build_backbone(cfg)
    return adapter.eval(), cfg


def adapter_tokens(adapter, pixels):
    with torch.no_grad():
        return adapter.encode(adapter.embed(pixels), adapter.grid(pixels))


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_adapter_tokens_equal_hf_forward(tmp_path, name):
    model_class, config = FAMILIES[name]
    model = randomised(model_class, config)
    adapter, cfg = adapter_for(tmp_path, model)
    assert adapter.num_prefix_tokens == PREFIX[name]
    pixels = torch.randn(2, 3, 32, 32)
    expected = reference_tokens(name, model, pixels)
    got = adapter_tokens(adapter, pixels)
    assert got.shape == (2, PREFIX[name] + 16, 32)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # rebuilt offline from the stored HF config + the adapter's weights: same tokens
    rebuilt, _ = build_backbone(cfg)
    rebuilt.load_state_dict(adapter.state_dict())
    assert torch.allclose(adapter_tokens(rebuilt.eval(), pixels), expected, atol=1e-5)


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_other_image_size_interpolates_like_hf(tmp_path, name):
    model_class, config = FAMILIES[name]
    model = randomised(model_class, config)
    adapter, _ = adapter_for(tmp_path, model)
    pixels = torch.randn(1, 3, 48, 40)  # a 6 x 5 patch grid instead of 4 x 4
    kwargs = {} if name.startswith(('dinov2', 'dpt', 'data2vec')) else {
        'interpolate_pos_encoding': True}
    if name.startswith('beit') or name.startswith('data2vec'):
        # HF interpolates BEiT's relative bias table for the new window by itself; its
        # `interpolate_pos_encoding` flag only resizes the (1 + N)^2 matrix, a no-op here
        kwargs = {'interpolate_pos_encoding': True} if name.startswith('beit') else {}
    expected = reference_tokens(name, model, pixels, **kwargs)
    got = adapter_tokens(adapter, pixels)
    assert got.shape == (1, PREFIX[name] + 30, 32)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize('name', ['vit', 'clip', 'siglip', 'beit_shared', 'data2vec_shared',
                                  'dinov2_with_registers'])
@pytest.mark.parametrize('layer', [-2, 1])
def test_feature_layer_equals_hf_hidden_states(tmp_path, name, layer):
    model_class, config = FAMILIES[name]
    model = randomised(model_class, config)
    adapter, _ = adapter_for(tmp_path, model, feature_layer=layer)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == 4  # embeddings + 3 layers
    assert torch.allclose(adapter_tokens(adapter, pixels), hidden[layer], atol=1e-5)


@pytest.mark.parametrize('full_class, vision_class, name', [
    (transformers.CLIPModel, transformers.CLIPVisionModel, 'clip'),
    (transformers.SiglipModel, transformers.SiglipVisionModel, 'siglip')])
def test_full_clip_and_siglip_checkpoints_load_their_vision_tower(tmp_path, full_class,
                                                                  vision_class, name):
    config_class = transformers.CLIPConfig if name == 'clip' else transformers.SiglipConfig
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    full = randomised(full_class, config_class(vision_config=SIZES, text_config=text))
    adapter, cfg = adapter_for(tmp_path, full)
    assert cfg.hf_config['model_type'] == f'{name}_vision_model'
    assert not any(key.startswith('text') for key in adapter.hf_model.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    expected = reference_tokens(name, full.vision_model, pixels)
    assert torch.allclose(adapter_tokens(adapter, pixels), expected, atol=1e-5)


def test_siglip_attention_pooling_head_is_dropped_and_has_no_cls():
    cfg = tiny_config(backbone__model_type='siglip').backbone
    adapter, _ = build_backbone(cfg)
    assert adapter.num_prefix_tokens == 0
    assert not any('head' in key for key in adapter.state_dict())


def test_extended_relative_bias_treats_extra_tokens_like_cls():
    heads, size = 2, 1 + 4  # [CLS] + a 2 x 2 grid
    bias = torch.arange(heads * size * size, dtype=torch.float).view(1, heads, size, size)
    extended = extend_relative_bias(bias, 2)  # [CLS, pose, pose, p0..p3]
    assert extended.shape == (1, heads, 7, 7)
    assert torch.equal(extend_relative_bias(bias, 0), bias)
    for pose in (1, 2):
        assert torch.equal(extended[0, :, pose, 3:], bias[0, :, 0, 1:])  # pose -> patch: CLS's
        assert torch.equal(extended[0, :, 3:, pose], bias[0, :, 1:, 0])  # patch -> pose: CLS's
        assert torch.equal(extended[0, :, pose, :3], bias[0, :, 0:1, 0].expand(heads, 3))
    assert torch.equal(extended[0, :, 3:, 3:], bias[0, :, 1:, 1:])  # patch pairs unchanged


def test_beit_pose_token_that_copies_cls_gets_cls_output():
    """A pose token equal to [CLS] is indistinguishable from it (same bias entries), so the
    encoder gives it [CLS]'s output, and the patches' outputs match a sequence with [CLS] twice:
    the extended bias is consistent, not merely the right shape."""
    model = randomised(transformers.BeitModel, transformers.BeitConfig(**BEIT_PER_LAYER, **SIZES))
    adapter = build_backbone_from_model(model)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = adapter.embed(pixels)  # (1, 1 + 16, D)
        extended = torch.cat([tokens[:, :1], tokens[:, :1], tokens[:, 1:]], dim=1)
        out = adapter.encode(extended, (4, 4))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6)


def build_backbone_from_model(model):
    from vit_perception.model.backbone import Backbone

    return Backbone(model).eval()


@pytest.mark.parametrize('model_type', ['vit', 'deit', 'dinov2', 'dinov2_with_registers', 'clip',
                                        'siglip', 'beit', 'data2vec-vision', 'dpt'])
@pytest.mark.parametrize('mode', ['early', 'late'])
def test_every_family_runs_early_and_late_fusion(model_type, mode):
    policy = build_policy(tiny_config(backbone__model_type=model_type, fusion__mode=mode,
                                      pose__num_tokens=2)).eval()
    pixels = torch.randn(2, 1, 3, 32, 32)
    position = torch.randn(2, 3)
    quat = torch.tensor([[0.0, 0.0, 0.0, 1.0]]).expand(2, 4)
    with torch.no_grad():
        embedding, chunk = policy(pixels, position, quat)
        _, moved = policy(pixels, position + 1.0, quat)
    assert embedding.shape == (2, 16) and chunk.shape == (2, 4, 7)
    assert torch.isfinite(chunk).all()
    assert (chunk - moved).abs().max() > 1e-5  # the pose reaches the output


def test_hierarchical_and_unknown_models_are_refused_in_one_line(tmp_path):
    transformers.SwinConfig(embed_dim=16, depths=[1], num_heads=[1]).save_pretrained(tmp_path)
    (tmp_path / 'model.safetensors').write_bytes(b'')
    cfg = tiny_config(backbone__pretrained=str(tmp_path)).backbone
    with pytest.raises(ConfigError, match='hierarchical') as info:
        build_backbone(cfg)
    assert '\n' not in str(info.value)
    cfg = tiny_config(backbone__hf_config={'model_type': 'bert'}).backbone
    with pytest.raises(ConfigError, match="'bert' is not supported"):
        build_backbone(cfg)


def test_feature_layer_out_of_range_is_one_line():
    cfg = tiny_config(backbone__feature_layer=-3).backbone  # tiny: 2 layers
    with pytest.raises(ConfigError, match='feature_layer=-3: this backbone has 2 layers'):
        build_backbone(cfg)
    with pytest.raises(ConfigError, match='feature_layer=0'):
        tiny_config(backbone__feature_layer=0)
