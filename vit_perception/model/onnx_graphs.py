"""The policy as ONNX graphs, exported once per checkpoint and dtype and cached by content hash.

Two graphs, fixed shapes (batch 1, the checkpoint's cameras and input size):
- `policy`: pixels (1, N, 3, H, W) fp32, normalized + pose features (1, F) fp32, raw (every
  arm's position + 6D rotation, then the proprio scalars: F = 9 * arms + P) ->
  embedding (1, E) fp32, chunk (1, H, A) fp32 in robot units; late fusion adds the cacheable
  image tokens (1, N * T, D) as a third output.
- `refresh` (late fusion only): image tokens (1, N * T, D) + pose features (1, F) ->
  embedding, chunk: the control-rate refresh of `Engine.refresh`.
Preprocessing and the pose features (position + 6D rotation + proprio) stay in torch; pose and
action normalization run in fp32 inside the graphs, whatever the dtype of the rest.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from vit_perception.errors import ConfigError
from vit_perception.model.config import POSE_FEATURES
from vit_perception.model.policy import VisionPosePolicy

log = logging.getLogger(__name__)

OPSET = 20
GRAPH_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
POLICY_INPUTS = ('pixels', 'pose_features')
REFRESH_INPUTS = ('image_tokens', 'pose_features')


class PolicyGraph(nn.Module):
    """pixels + pose features -> embedding, chunk [, image tokens] (see module docstring)."""

    def __init__(self, policy: VisionPosePolicy):
        super().__init__()
        self.policy = policy
        self.dtype = policy.camera_embed.dtype

    def forward(self, pixels: torch.Tensor, pose_features: torch.Tensor):
        pose = self.policy.pose_tokenizer(pose_features)  # (1, arms * K, D)
        pixels = pixels.to(self.dtype)  # (1, N, 3, H, W)
        if self.policy.fusion_mode == 'late':
            tokens = self.policy.encode_images(pixels)  # (1, N * T, D)
            return (*_heads(self.policy, self.policy.fuse(tokens, pose)), tokens)
        return _heads(self.policy, self.policy.early_features(pixels, pose))


class RefreshGraph(nn.Module):
    """Late fusion: cached image tokens + pose features -> embedding, chunk."""

    def __init__(self, policy: VisionPosePolicy):
        super().__init__()
        self.policy = policy

    def forward(self, image_tokens: torch.Tensor, pose_features: torch.Tensor):
        pose = self.policy.pose_tokenizer(pose_features)  # (1, arms * K, D)
        return _heads(self.policy, self.policy.fuse(image_tokens, pose))


def _heads(policy: VisionPosePolicy, feature: torch.Tensor):
    embedding, chunk = policy.forward_head(feature)  # (1, E), (1, H, A) normalized
    return embedding.float(), policy.actions_from_normalized(chunk)  # chunk in robot units


def graph_policy(policy: VisionPosePolicy, dtype: str) -> VisionPosePolicy:
    """A CPU copy of `policy` in `dtype`, normalization in fp32 (as the engine runs it)."""
    stats = policy.normalization()
    graph = copy.deepcopy(policy).to('cpu', GRAPH_DTYPES[dtype]).eval()
    graph.pose_tokenizer.normalizer.float()
    graph.action_normalizer.float()
    graph.set_normalization(stats)
    return graph


def example_inputs(policy: VisionPosePolicy, dtype: str):
    """Zero inputs of the exported shapes: (pixels, pose features), (image tokens, features)."""
    config = policy.config
    height, width = config.preprocess.output_size
    pixels = torch.zeros(1, len(config.cameras), 3, height, width)  # (1, N, 3, H, W)
    features = torch.zeros(1, config.pose.feature_dim)  # (1, 9 * arms + P)
    for arm in range(len(config.pose.arms)):  # identity rotations (6D: the first two columns)
        features[0, POSE_FEATURES * arm + 3] = features[0, POSE_FEATURES * arm + 7] = 1.0
    with torch.no_grad():
        tokens = policy.encode_images(pixels.to(policy.camera_embed.dtype)) \
            if config.fusion.mode == 'late' else None  # (1, N * T, D)
    return (pixels, features), (tokens, features)


def content_hash(policy: VisionPosePolicy, dtype: str) -> str:
    """sha256 of what determines the graphs: config, weights, normalization, dtype, exporter."""
    digest = hashlib.sha256()
    meta = {'config': policy.config.to_dict(), 'normalization': policy.normalization(),
            'dtype': dtype, 'opset': OPSET, 'torch': torch.__version__}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in sorted(policy.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{data.dtype}:{tuple(data.shape)}'.encode())
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/vit_perception/onnx (default ~/.cache/vit_perception/onnx)."""
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'vit_perception' / 'onnx'


def cached_graphs(policy: VisionPosePolicy, dtype: str = 'fp32',
                  cache_dir: str | Path = '') -> dict[str, Path]:
    """{'policy': path[, 'refresh': path]}: exported on first use, then reused."""
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f'ONNX cache directory {directory}: {err.strerror}; set '
                          'engine.cache_dir to a writable directory') from None
    key = content_hash(policy, dtype)[:20]
    names = ['policy'] + (['refresh'] if policy.config.fusion.mode == 'late' else [])
    paths = {name: directory / f'{key}-{dtype}-{name}.onnx' for name in names}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        log.info('exporting the policy to ONNX (%s, %s): %s', dtype, ', '.join(missing),
                 directory)
        export_graphs(policy, dtype, {name: paths[name] for name in missing})
    return paths


def export_graphs(policy: VisionPosePolicy, dtype: str, outputs: dict[str, Path]) -> None:
    """Write the named graphs ('policy', 'refresh') to their paths, each atomically."""
    for module in ('onnx', 'onnxscript'):  # what torch's dynamo exporter needs
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f'exporting to ONNX needs the {module!r} package, which is not '
                              "installed: pip install 'vit_perception[runtimes]'")
    if 'refresh' in outputs and policy.config.fusion.mode != 'late':
        raise ConfigError('the refresh graph exists only for late fusion (fusion.mode: late)')
    graph = graph_policy(policy, dtype)
    policy_args, refresh_args = example_inputs(graph, dtype)
    for name, path in outputs.items():
        if name == 'policy':
            late = graph.config.fusion.mode == 'late'
            _export(PolicyGraph(graph), policy_args, POLICY_INPUTS,
                    ['embedding', 'chunk'] + (['image_tokens'] if late else []), Path(path))
        else:
            _export(RefreshGraph(graph), refresh_args, REFRESH_INPUTS, ['embedding', 'chunk'],
                    Path(path))


def _export(module: nn.Module, args, input_names, output_names, path: Path) -> None:
    """torch.onnx.export (dynamo, OPSET) into a temporary file, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(handle)
    quiet = [logging.getLogger(name) for name in ('torch.onnx', 'onnx_ir', 'onnxscript')]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:  # the exporter narrates every pass at INFO, and warns on torchvision
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            program = torch.onnx.export(module.eval(), args, input_names=list(input_names),
                                        output_names=list(output_names), opset_version=OPSET,
                                        dynamo=True, external_data=False, verbose=False)
        program.save(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
