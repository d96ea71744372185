"""`vit-perception pretrain` on tiny bags: both objectives end to end, the output trains and
replays through the node core, determinism, exact resume, codebook usage, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from vit_perception.model.backbone import build_backbone
from vit_perception.model.checkpoint import load_checkpoint
from vit_perception.model.config import PolicyConfig, tiny_config
from vit_perception.model.policy import build_policy
from vit_perception.model.pretraining import (
    EMACodebook,
    PixelMasker,
    codebook_usage,
    patchify,
    random_patch_mask,
)
from vit_perception.tools import cli, pretrain
from vit_perception.tools.sim.record import record_episodes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/doubles.py (importlib mode)
from doubles import TINY_POLICY  # noqa: E402

TINY = {**TINY_POLICY, 'backbone': {**TINY_POLICY['backbone'], 'num_layers': 2}}


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    record_episodes(root / 'demos', 2, seed=0, image_size=32, max_steps=8)
    return root / 'demos'


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('config') / 'policy.json'
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope='module')
def hf_teacher(tmp_path_factory):
    """A tiny HF DINOv2 directory at another resolution (48 px, 6 x 6 grid) and width (24)."""
    path = tmp_path_factory.mktemp('teacher')
    torch.manual_seed(1)
    transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
        image_size=48, patch_size=8)).save_pretrained(path)
    return path


def pretrain_cli(bags, out, config_file, *extra):
    return cli.main(['pretrain', str(bags), '--out', str(out), '--config', str(config_file),
                     '--batch-size', '8', *extra])


def report(out):
    return json.loads((Path(out) / 'pretrain_report.json').read_text())


# ------------------------------------------------------------------------- objectives ---

def test_pixel_mask_patch_acts_as_a_learned_mask_token():
    backbone, _ = build_backbone(tiny_config().backbone)
    masker = PixelMasker(8)
    torch.nn.init.normal_(masker.mask_patch)
    pixels = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 5]] = True
    projection = backbone.hf_model.embeddings.patch_embeddings.projection
    with torch.no_grad():
        tokens = projection(masker(pixels, mask)).flatten(2).transpose(1, 2)  # (1, 16, D)
        token = projection(masker.mask_patch[None]).flatten()  # the mask token it amounts to
        clean = projection(pixels).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens[0, 0], token, atol=1e-5)
    assert torch.allclose(tokens[0, 5], token, atol=1e-5)
    assert torch.equal(tokens[0, 1], clean[0, 1])


def test_patchify_matches_the_patch_token_order():
    pixels = torch.arange(2 * 3 * 16 * 24, dtype=torch.float).view(2, 3, 16, 24)
    patches = patchify(pixels, 8)
    assert patches.shape == (2, 6, 192)
    assert torch.equal(patches[1, 4].view(3, 8, 8), pixels[1, :, 8:16, 8:16])  # row 1, col 1


def test_random_patch_mask_masks_the_ratio_exactly():
    mask = random_patch_mask(5, (4, 4), 0.4, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 16) and mask.sum(1).tolist() == [6] * 5


def test_ema_codebook_moves_codes_to_their_vectors_and_stays_normalized():
    torch.manual_seed(0)
    book = EMACodebook(4, 3, decay=0.5)
    z = F.normalize(torch.tensor([[1.0, 0.0, 0.0]]).repeat(8, 1), dim=-1)
    _, ids = book(z)
    code = int(ids[0])
    before = book.codes[code].clone()
    for _ in range(10):
        book(z)
    assert torch.allclose(book.codes.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(book.codes[code], z[0], atol=1e-3)
    assert not torch.allclose(before, z[0], atol=1e-3)
    book.eval()
    frozen = book.codes.clone()
    book(F.normalize(torch.randn(8, 3), dim=-1))
    assert torch.equal(book.codes, frozen)  # no update outside training


def test_codebook_usage_counts_codes_and_perplexity():
    usage = codebook_usage(torch.tensor([0, 0, 1, 1]), 8)
    assert usage['codes_used'] == 2 and usage['codebook_fraction'] == 0.25
    assert usage['perplexity'] == pytest.approx(2.0)


# ------------------------------------------------------------------------ end to end ---

def test_output_carries_the_frames_preprocessing(bags, tmp_path):
    """preprocessor_config.json: an HF processor that preprocesses like the recipe, which
    `train --pretrained` (build_policy) then uses whatever its own recipe says."""
    recipe = dict(TINY, preprocess={'size': [40, 40], 'crop_size': [32, 32],
                                    'mean': [0.4, 0.45, 0.5], 'std': [0.2, 0.25, 0.3],
                                    'resample': 'bicubic'})
    config_file = tmp_path / 'recipe.json'
    config_file.write_text(json.dumps(recipe))
    out = tmp_path / 'ssl'
    assert pretrain_cli(bags, out, config_file, '--epochs', '1') == 0
    written = json.loads((out / 'preprocessor_config.json').read_text())
    assert written['crop_size'] == {'height': 32, 'width': 32} and written['resample'] == 3
    expected = PolicyConfig.from_dict(recipe).preprocess
    config = PolicyConfig.from_dict(TINY)  # another recipe's preprocessing...
    config.backbone.pretrained = str(out)
    build_policy(config)
    assert config.preprocess.size == expected.size  # ...replaced by the pretrained one
    assert config.preprocess.crop_size == expected.crop_size
    assert config.preprocess.resample == 'bicubic'
    assert config.preprocess.mean == pytest.approx(expected.mean)
    assert config.preprocess.std == pytest.approx(expected.std)


def test_simmim_output_is_an_hf_directory_that_train_loads(bags, config_file, tmp_path):
    out = tmp_path / 'ssl'
    assert pretrain_cli(bags, out, config_file, '--objective', 'simmim', '--epochs', '3',
                        '--lr', '3e-3') == 0
    history = report(out)['history']
    assert [h['epoch'] for h in history] == [1, 2, 3]
    assert history[-1]['loss'] < history[0]['loss']
    assert report(out)['frames'] == 18  # 2 episodes x 9 observations, 1 camera
    assert transformers.AutoConfig.from_pretrained(out).model_type == 'vit'
    pretrained = transformers.AutoModel.from_pretrained(out).state_dict()
    torch.manual_seed(0)  # the student's initialization (--seed 0)
    initial = build_backbone(PolicyConfig.from_dict(TINY).backbone)[0].hf_model.state_dict()
    moved = [k for k, v in initial.items() if not torch.equal(v, pretrained[k])]
    assert 'embeddings.patch_embeddings.projection.weight' in moved
    # a frozen pretrained backbone comes out of `train` unchanged
    ckpt = tmp_path / 'ckpt'
    assert cli.main(['train', str(bags), '--out', str(ckpt), '--config', str(config_file),
                     '--pretrained', str(out), '--freeze-backbone', '--epochs', '1',
                     '--batch-size', '8']) == 0
    policy, _ = load_checkpoint(ckpt)
    assert policy.config.preprocess == PolicyConfig.from_dict(TINY).preprocess
    state = policy.backbone.hf_model.state_dict()
    assert state.keys() <= pretrained.keys()  # the pooler was dropped
    assert all(torch.equal(v, pretrained[k]) for k, v in state.items())


def test_beitv2_with_hf_teacher_trains_replays_and_reports_codebook(bags, config_file,
                                                                    hf_teacher, tmp_path):
    out = tmp_path / 'beit'
    assert pretrain_cli(bags, out, config_file, '--objective', 'beitv2', '--teacher',
                        str(hf_teacher), '--tokenizer-epochs', '2', '--epochs', '2',
                        '--codebook-size', '16', '--set', 'backbone.model_type=beit') == 0
    history = report(out)['history']
    assert [h['phase'] for h in history] == ['tokenizer', 'tokenizer', 'mim', 'mim']
    tokenizer = history[1]
    assert 1 <= tokenizer['codes_used'] <= 16
    assert tokenizer['codebook_fraction'] == tokenizer['codes_used'] / 16
    assert 1.0 <= tokenizer['perplexity'] <= tokenizer['codes_used'] + 1e-6
    assert 0.0 <= tokenizer['rec'] <= 2.0
    assert {'mim', 'cls_head', 'accuracy'} <= set(history[-1])  # BEiT has a [CLS]: the head runs
    assert transformers.AutoConfig.from_pretrained(out).model_type == 'beit'
    ckpt = tmp_path / 'ckpt'
    assert cli.main(['train', str(bags), '--out', str(ckpt), '--config', str(config_file),
                     '--pretrained', str(out), '--epochs', '1', '--batch-size', '8']) == 0
    bag = sorted(Path(bags).iterdir())[0]
    assert cli.main(['replay', str(bag), '--model', str(ckpt), '--out',
                     str(tmp_path / 'replayed')]) == 0
    assert (tmp_path / 'replayed').exists()


def test_teacher_can_be_an_earlier_training_checkpoint(bags, config_file, tmp_path):
    ckpt = tmp_path / 'bc'
    assert cli.main(['train', str(bags), '--out', str(ckpt), '--config', str(config_file),
                     '--epochs', '1', '--batch-size', '8']) == 0
    out = tmp_path / 'beit'
    assert pretrain_cli(bags, out, config_file, '--objective', 'beitv2', '--teacher',
                        str(ckpt), '--tokenizer-epochs', '1', '--epochs', '1',
                        '--codebook-size', '8', '--set', 'backbone.model_type=siglip') == 0
    last = report(out)['history'][-1]
    assert 'cls_head' not in last  # SigLIP has no [CLS]: no aggregation head
    assert last['mim'] > 0


def test_same_seed_same_weights_and_resume_equals_uninterrupted(bags, config_file, hf_teacher,
                                                                tmp_path, monkeypatch, capsys):
    args = ('--objective', 'beitv2', '--teacher', str(hf_teacher), '--tokenizer-epochs', '1',
            '--epochs', '2', '--codebook-size', '8')
    assert pretrain_cli(bags, tmp_path / 'a', config_file, *args) == 0
    assert pretrain_cli(bags, tmp_path / 'b', config_file, *args) == 0
    assert (tmp_path / 'a' / 'model.safetensors').read_bytes() == (
        tmp_path / 'b' / 'model.safetensors').read_bytes()

    save = pretrain._save_state

    def interrupt_after_epoch_2(directory, optimizer, state):
        save(directory, optimizer, state)
        if state['epoch'] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, '_save_state', interrupt_after_epoch_2)
    assert pretrain_cli(bags, tmp_path / 'split', config_file, *args) == 0
    assert 'interrupted' in capsys.readouterr().err
    monkeypatch.setattr(pretrain, '_save_state', save)
    assert cli.main(['pretrain', str(bags), '--out', str(tmp_path / 'split'), '--resume']) == 0
    assert [h['epoch'] for h in report(tmp_path / 'split')['history']] == [1, 2, 3]
    straight = load_file(str(tmp_path / 'a' / 'model.safetensors'))
    resumed = load_file(str(tmp_path / 'split' / 'model.safetensors'))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize('extra, message', [
    (['--objective', 'beitv2'], '--objective beitv2 needs --teacher'),
    (['--objective', 'beitv2', '--teacher', '/no/such/dir'], 'not a directory'),
    (['--mask-ratio', '1.5'], '--mask-ratio 1.5'),
    (['--resume'], '--resume continues with the saved recipe'),
])
def test_bad_input_is_one_line(bags, config_file, tmp_path, capsys, extra, message):
    assert pretrain_cli(bags, tmp_path / 'out', config_file, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_no_bags_is_one_line(tmp_path, capsys):
    assert cli.main(['pretrain', str(tmp_path), '--out', str(tmp_path / 'o')]) == 2
    assert 'no bags found' in capsys.readouterr().err
