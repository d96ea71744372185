"""`vit-perception export`: data or a checkpoint into another format; the flag names the target.

    vit-perception export --model CKPT --onnx policy.onnx      # checkpoint -> ONNX
    vit-perception export bags/ --to-lerobot datasets/reach     # bags -> LeRobotDataset v3.0

--onnx writes the policy graph (pixels + pose features -> embedding + chunk; late fusion also
returns the image tokens), and with `--fusion-refresh` the late-fusion refresh graph (image
tokens + pose features -> embedding + chunk) beside it, as `OUT.refresh.onnx`. Inputs, outputs
and their shapes are listed in `model/onnx_graphs.py`; each file is written atomically. An fp32
export is checked against the torch policy with ONNX Runtime when it is installed.

--to-lerobot writes one LeRobot episode per bag (tools/lerobot.py): each camera topic as an AV1
video `observation.images.<camera>`, the end-effector pose (+ joint positions when the bag has
--joint-topic) as `observation.state`, the recorded action as `action`. Frames are the
observations `vit-perception train` builds from the same bags (node config: topics, sync).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', nargs='*', metavar='BAG',
                        help='--to-lerobot: bags (rosbag2 directories, .mcap, .db3) or '
                        'directories of bags')
    target = parser.add_argument_group('target (exactly one)').add_mutually_exclusive_group(
        required=True)
    target.add_argument('--onnx', metavar='OUT.onnx', help='write the policy as ONNX '
                        "(opset 20, batch 1, the checkpoint's cameras and input size)")
    target.add_argument('--to-lerobot', default=None, metavar='DIR',
                        help='write the bags as a LeRobotDataset v3.0 directory (must not exist '
                        'or be empty)')
    onnx = parser.add_argument_group('--onnx options')
    onnx.add_argument('--model', default='', help='checkpoint directory (default: the '
                      'checkpoint shipped with the package)')
    onnx.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32',
                      help='weights and compute dtype; inputs and the chunk stay fp32, '
                      'normalization runs in fp32 (default fp32)')
    onnx.add_argument('--fusion-refresh', action='store_true', help='late fusion: also '
                      'write the refresh graph (cached image tokens + a newer pose -> chunk) '
                      'as OUT.refresh.onnx')
    onnx.add_argument('--overwrite', action='store_true',
                      help='replace OUT.onnx (and OUT.refresh.onnx) when they exist')
    lerobot = parser.add_argument_group('--to-lerobot options')
    lerobot.add_argument('--node-config', default=None,
                         help='node YAML (topics.cameras, topics.poses, sync) used to build the '
                         'observations, as training does (default: the node defaults)')
    lerobot.add_argument('--action-topic', default='/expert/action',
                         help='ActionChunk topic holding the recorded actions')
    lerobot.add_argument('--joint-topic', default='/joint_states',
                         help='sensor_msgs/JointState topic appended to observation.state when '
                         'the bag has it')
    lerobot.add_argument('--fps', type=int, default=None,
                         help='frame rate (default: from the image stamps)')
    lerobot.add_argument('--task', default='demonstration',
                         help='task text stored with every episode')
    lerobot.add_argument('--robot-type', default=None, help='info.json robot_type')
    lerobot.add_argument('--vcodec', default='libsvtav1', choices=['libsvtav1', 'libx264'],
                         help="video codec (default libsvtav1, LeRobot's)")
    lerobot.add_argument('--crf', type=int, default=30,
                         help="video quality: lower is better and larger (default 30, LeRobot's)")
    lerobot.add_argument('--json', action='store_true', help='print the summary as JSON')


def run(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError

    if args.onnx:
        if args.bags:
            raise ConfigError('--onnx exports a checkpoint (--model), not bags: drop the BAG '
                              'arguments')
        return export_onnx(args)
    return to_lerobot(args)


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
    existing = [str(path) for path in outputs.values() if path.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f'{", ".join(existing)} exists: give another --onnx name, or '
                          '--overwrite to replace it')
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


def to_lerobot(args: argparse.Namespace) -> int:
    from vit_perception.config import load_node_config
    from vit_perception.errors import ConfigError
    from vit_perception.tools import dataset, lerobot

    if not args.bags:
        raise ConfigError('no bags given: expected BAG... (bags or directories of bags)')
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f'--fps {args.fps}: expected a positive integer')
    if not 0 <= args.crf <= 63:
        raise ConfigError(f'--crf {args.crf}: expected 0..63')
    bags = dataset.find_bags(args.bags)
    summary = lerobot.export_bags(
        bags, args.to_lerobot, load_node_config(args.node_config),
        action_topic=args.action_topic, joint_topic=args.joint_topic, fps=args.fps,
        encoding=lerobot.VideoEncoding(vcodec=args.vcodec, crf=args.crf), task=args.task,
        robot_type=args.robot_type)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        drops = ', '.join(f'{k} x{v}' for k, v in summary['dropped'].items()) or 'none'
        print(f"wrote {summary['out']}: {len(summary['episodes'])} episodes, "
              f"{summary['frames']} frames at {summary['fps']} fps; cameras "
              f"{', '.join(summary['cameras'])}; state {' '.join(summary['state_names'])}; "
              f"action {' '.join(summary['action_names'])}; dropped observations: {drops}")
    return 0
