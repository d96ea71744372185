"""`vit-perception export`: a checkpoint into another format, for users who deploy elsewhere.

One target per flag (`--onnx OUT.onnx`; more targets join the `target` group). ONNX: the policy
graph (pixels + pose features -> embedding + chunk; late fusion also returns the image tokens),
and with `--fusion-refresh` the late-fusion refresh graph (image tokens + pose features ->
embedding + chunk) beside it, as `OUT.refresh.onnx`. Inputs, outputs and their shapes are listed
in `model/onnx_graphs.py`; each file is written atomically. An fp32 export is checked against
the torch policy with ONNX Runtime when it is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default='', help='checkpoint directory (default: the '
                        'checkpoint shipped with the package)')
    target = parser.add_argument_group('target (exactly one)').add_mutually_exclusive_group(
        required=True)
    target.add_argument('--onnx', metavar='OUT.onnx', help='write the policy as ONNX '
                        "(opset 20, batch 1, the checkpoint's cameras and input size)")
    parser.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32',
                        help='ONNX: weights and compute dtype; inputs and the chunk stay fp32, '
                        'normalization runs in fp32 (default fp32)')
    parser.add_argument('--fusion-refresh', action='store_true', help='ONNX, late fusion: also '
                        'write the refresh graph (cached image tokens + a newer pose -> chunk) '
                        'as OUT.refresh.onnx')


def run(args: argparse.Namespace) -> int:
    if args.onnx:
        return export_onnx(args)
    raise AssertionError('argparse requires one target')  # pragma: no cover


def refresh_path(out: Path) -> Path:
    """OUT.onnx -> OUT.refresh.onnx."""
    return out.with_name(f'{out.stem}.refresh{out.suffix}')


def export_onnx(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError
    from vit_perception.model.onnx_graphs import export_graphs

    out = Path(args.onnx)
    if out.suffix != '.onnx':
        raise ConfigError(f'--onnx {out}: expected a file name ending in .onnx')
    if out.is_dir():
        raise ConfigError(f'--onnx {out} is a directory: give a file name ending in .onnx')
    policy = _load(args.model)
    if args.fusion_refresh and policy.config.fusion.mode != 'late':
        raise ConfigError('--fusion-refresh: this checkpoint uses early fusion (the pose enters '
                          'the ViT), so there is no refresh graph; drop the flag')
    outputs = {'policy': out}
    if args.fusion_refresh:
        outputs['refresh'] = refresh_path(out)
    print(f'vit-perception export: exporting {args.model or "the shipped checkpoint"} '
          f'({policy.config.fusion.mode} fusion, {args.dtype}) ...', file=sys.stderr)
    export_graphs(policy, args.dtype, outputs)
    for name, path in outputs.items():
        check = _check(policy, name, path, args.dtype)
        print(f'{name}: {path} ({path.stat().st_size / 1e6:.1f} MB){check}')
    return 0


def _load(model: str):
    from vit_perception.core.engine import DEFAULT_CHECKPOINT
    from vit_perception.model.checkpoint import load_checkpoint

    return load_checkpoint(model or DEFAULT_CHECKPOINT)[0].eval()


def _check(policy, name: str, path: Path, dtype: str) -> str:
    """', max |onnx - torch| ...' on random inputs (fp32 with ONNX Runtime), else ''."""
    from vit_perception.core.runtimes import importable

    if dtype != 'fp32' or not importable('onnxruntime'):
        return ''
    import numpy as np
    import onnxruntime as ort
    import torch

    from vit_perception.model import onnx_graphs

    graph = onnx_graphs.graph_policy(policy, dtype)
    policy_args, refresh_args = onnx_graphs.example_inputs(graph, dtype)
    torch.manual_seed(0)
    pixels = torch.randn_like(policy_args[0])  # (1, N, 3, H, W)
    features = policy_args[1] + 0.1 * torch.randn_like(policy_args[1])  # (1, F)
    if name == 'policy':
        module, inputs = onnx_graphs.PolicyGraph(graph), (pixels, features)
        names = onnx_graphs.POLICY_INPUTS
    else:
        module, inputs = onnx_graphs.RefreshGraph(graph), (refresh_args[0], features)
        names = onnx_graphs.REFRESH_INPUTS
    with torch.no_grad():
        want = module(*inputs)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
    error = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    return f', max |onnx - torch| {error:.1e} (ONNX Runtime, random inputs)'
