"""`vit-perception export --onnx`: files that run elsewhere and equal the torch policy."""

import numpy as np
import pytest
import torch

from vit_perception.model.checkpoint import save_checkpoint
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy
from vit_perception.tools.cli import main

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')
STATS = {'pose_mean': [0.3] * 9, 'pose_std': [0.5] * 9, 'action_mean': [0.1] * 7,
         'action_std': [0.2] * 7}


@pytest.fixture(scope='module')
def late_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    policy = build_policy(tiny_config(fusion__mode='late')).eval()
    policy.set_normalization(STATS)
    path = tmp_path_factory.mktemp('ckpt') / 'late'
    save_checkpoint(policy, path)
    return path, policy


def test_late_fusion_policy_and_refresh_graphs_equal_torch(late_checkpoint, tmp_path, capsys):
    checkpoint, policy = late_checkpoint
    out = tmp_path / 'out' / 'policy.onnx'
    assert main(['export', '--model', str(checkpoint), '--onnx', str(out),
                 '--fusion-refresh']) == 0
    printed = capsys.readouterr().out
    assert 'max |onnx - torch|' in printed and printed.count('.onnx') == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ['policy.onnx', 'policy.refresh.onnx']

    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((1, 1, 3, 32, 32)).astype(np.float32)
    features = np.array([[0.4, 0.0, 0.3, 1, 0, 0, 0, 1, 0]], dtype=np.float32)
    moved = features + np.array([[0.1, 0.05, -0.1, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    run = ort.InferenceSession(str(out)).run
    embedding, chunk, tokens = run(None, {'pixels': pixels, 'pose_features': features})
    refresh = ort.InferenceSession(str(out.parent / 'policy.refresh.onnx')).run
    _, refreshed = refresh(None, {'image_tokens': tokens, 'pose_features': moved})

    with torch.no_grad():
        quat = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
        want_embedding, want = policy(torch.from_numpy(pixels), torch.tensor([[0.4, 0.0, 0.3]]),
                                      quat)
        want = policy.actions_from_normalized(want)
        _, want_moved = policy(torch.from_numpy(pixels), torch.tensor([[0.5, 0.05, 0.2]]), quat)
        want_moved = policy.actions_from_normalized(want_moved)
    assert chunk.shape == (1, 4, 7) and embedding.shape == (1, 16) and tokens.shape[0] == 1
    np.testing.assert_allclose(chunk, want.numpy(), atol=1e-5)
    np.testing.assert_allclose(embedding, want_embedding.numpy(), atol=1e-5)
    np.testing.assert_allclose(refreshed, want_moved.numpy(), atol=1e-5)
    assert np.abs(refreshed - chunk).max() > 1e-4


@pytest.mark.parametrize('dtype, elem', [('bf16', 'BFLOAT16'), ('fp16', 'FLOAT16')])
def test_low_precision_export_keeps_fp32_inputs_and_chunk(late_checkpoint, tmp_path, dtype,
                                                          elem):
    out = tmp_path / f'{dtype}.onnx'
    assert main(['export', '--model', str(late_checkpoint[0]), '--onnx', str(out),
                 '--dtype', dtype]) == 0
    model = onnx.load(str(out))
    weights = {i.data_type for i in model.graph.initializer}
    assert getattr(onnx.TensorProto, elem) in weights
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input,
                                                            *model.graph.output]}
    assert types['pixels'] == types['pose_features'] == types['chunk'] == onnx.TensorProto.FLOAT
    assert types['image_tokens'] == getattr(onnx.TensorProto, elem)
    assert not list(tmp_path.glob('.*.tmp'))  # written atomically, nothing left behind


@pytest.mark.parametrize('argv, message', [
    (['--onnx', 'model.pt'], 'ending in .onnx'),
    (['--model', '/nonexistent/ckpt', '--onnx', 'a.onnx'], 'not found'),
    (['--onnx', 'a.onnx', '--fusion-refresh'], 'early fusion'),  # the shipped checkpoint
])
def test_bad_arguments_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(['export', *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and 'Traceback' not in err[0]
    assert not list(tmp_path.iterdir())


def test_an_existing_file_is_kept_unless_overwrite(late_checkpoint, tmp_path, capsys):
    out = tmp_path / 'policy.onnx'
    out.write_bytes(b'keep me')
    argv = ['export', '--model', str(late_checkpoint[0]), '--onnx', str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'exists' in err[0] and '--overwrite' in err[0]
    assert out.read_bytes() == b'keep me'
    assert main([*argv, '--overwrite']) == 0
    assert out.read_bytes()[:8] != b'keep me' and out.stat().st_size > 1000
