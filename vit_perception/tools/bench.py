"""`vit-perception bench`: the naive HF pipeline vs the engine, same model, same inputs, one run.

Naive = what a user writes from the HF docs: `ViTImageProcessor` on the decoded image, then the
same policy (ViT + pose tokens + heads) in fp32 eager mode. Engine = zero-copy decode,
preprocessing on the device, the engine's dtype (bf16 where the hardware has it), optional
torch.compile. The two alternate iteration by iteration so both see the same machine state.
Also measured in the same run: the matmul peak of this device and the model's achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np

from vit_perception.tools import live_bench

SIZES = {  # hidden, layers, heads (patch 16, 224x224)
    'tiny': (192, 12, 3),
    'small': (384, 12, 6),
    'base': (768, 12, 12),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default='', help='checkpoint directory (default: a randomly '
                        'initialized ViT of --size; speed does not depend on the weights)')
    parser.add_argument('--size', choices=sorted(SIZES), default='small',
                        help='ViT size when no --model is given (default: small = ViT-S/16)')
    parser.add_argument('--fusion', choices=['early', 'late'], default='early')
    parser.add_argument('--cameras', type=int, default=1, help='camera streams (default 1)')
    parser.add_argument('--image', default='640x480', help='input WIDTHxHEIGHT rgb8')
    parser.add_argument('--iters', type=int, default=30, help='timed iterations per pipeline')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16', 'fp16'])
    parser.add_argument('--compile', action=argparse.BooleanOptionalAction, default=True,
                        help='torch.compile the engine with Inductor freezing, its best path '
                        '(default; --no-compile: eager, no compile time)')
    parser.add_argument('--json', action='store_true', help='print JSON only')
    live_bench.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError

    if args.live or args.soak:
        return live_bench.run(args)

    try:
        width, height = (int(v) for v in args.image.lower().split('x'))
    except ValueError:
        raise ConfigError(f'--image {args.image!r}: expected WIDTHxHEIGHT, e.g. 640x480') from None
    if args.iters < 1 or args.cameras < 1:
        raise ConfigError('--iters and --cameras must be >= 1')
    report = benchmark(model=args.model, size=args.size, fusion=args.fusion,
                       cameras=args.cameras, width=width, height=height, iters=args.iters,
                       warmup=args.warmup, device=args.device, dtype=args.dtype,
                       compile=args.compile,
                       progress=None if args.json else lambda text: print(text, file=sys.stderr))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def benchmark(*, model='', size='small', fusion='early', cameras=1, width=640, height=480,
              iters=30, warmup=3, device='auto', dtype='auto', compile=False,
              progress=None) -> dict:
    """Run both pipelines alternately; return medians/p99 per stage, ratio and GFLOP/s."""
    import torch

    from vit_perception.core.engine import Engine, resolve_device, resolve_dtype
    from vit_perception.core.types import ImageFrame, Observation, PoseSample

    policy = _load_policy(model, size, fusion, cameras)
    naive = NaivePipeline(copy.deepcopy(policy).float().eval())
    if progress:
        progress('bench: building the engine (warm-up included)...')
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(cameras)]
    frames = tuple(ImageFrame(stamp_ns=0, frame_id='camera', data=img.tobytes(), height=height,
                              width=width, encoding='rgb8', step=width * 3, camera=i)
                   for i, img in enumerate(images))
    engine = Engine(policy, device=device, dtype=dtype, compile=compile, warmup_iters=warmup,
                    warmup_frames=frames)
    pose = PoseSample(0, 'base', np.array([0.4, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]))
    obs = Observation(stamp_ns=0, frames=frames, pose=pose,
                      proprio=np.zeros(len(policy.config.pose.proprio_names)))

    for _ in range(warmup):
        naive(images, pose)
    naive_times: list[dict] = []
    engine_times: list[dict] = []
    for i in range(iters):
        # Alternate which pipeline goes first so neither always runs on a warmer cache.
        order = (('naive', 'engine') if i % 2 == 0 else ('engine', 'naive'))
        for which in order:
            if which == 'naive':
                naive_times.append(naive(images, pose))
            else:
                engine_times.append(engine.infer(obs).timings_ms)
    if progress:
        progress('bench: measuring the matmul peak...')
    dev = resolve_device(device)
    engine_dtype = resolve_dtype(dtype, dev)
    flops = _model_flops(naive.policy, images, pose, naive)
    peak = {'fp32': _matmul_gflops(dev, torch.float32)}
    if engine_dtype != torch.float32:
        peak[str(engine_dtype).replace('torch.', '')] = _matmul_gflops(dev, engine_dtype)
    naive_stats = _summarize(naive_times)
    engine_stats = _summarize(engine_times)
    engine_model_ms = sum(engine_stats[s]['p50'] for s in ('encode', 'fuse', 'heads'))
    return {
        'device': str(dev),
        'device_name': _device_name(dev),
        'torch_threads': torch.get_num_threads(),
        'engine_dtype': str(engine_dtype).replace('torch.', ''),
        'compile': compile,
        'model': model or f'random-init ViT-{size[0].upper()}/16 224',
        'fusion': fusion,
        'cameras': cameras,
        'image': f'{width}x{height} rgb8',
        'iters': iters,
        'naive_ms': naive_stats,
        'engine_ms': engine_stats,
        'speedup_p50': naive_stats['total']['p50'] / engine_stats['total']['p50'],
        'speedup_p99': naive_stats['total']['p99'] / engine_stats['total']['p99'],
        'model_gflop': flops / 1e9,
        'achieved_gflops': {
            'naive_fp32': flops / 1e9 / (naive_stats['model']['p50'] / 1e3),
            'engine': flops / 1e9 / (engine_model_ms / 1e3),
        },
        'matmul_peak_gflops': peak,
    }


class NaivePipeline:
    """HF image processor + fp32 eager policy: the baseline a user would write first."""

    def __init__(self, policy):
        import transformers

        cfg = policy.config.preprocess
        size = ({'shortest_edge': cfg.shortest_edge} if cfg.shortest_edge
                else {'height': cfg.size[0], 'width': cfg.size[1]})
        crop = {'height': cfg.crop_size[0], 'width': cfg.crop_size[1]} if cfg.crop_size else None
        processor_class = getattr(transformers, 'ViTImageProcessorPil', None)
        if processor_class is None:
            processor_class = transformers.ViTImageProcessor
        self.processor = processor_class(size=size, image_mean=cfg.mean, image_std=cfg.std,
                                         **({'crop_size': crop, 'do_center_crop': True}
                                            if crop else {}))
        self.policy = policy

    def __call__(self, images, pose) -> dict:
        import torch

        start = time.perf_counter()
        pixels = self.processor(images=list(images), return_tensors='pt')['pixel_values']
        t = time.perf_counter()
        with torch.no_grad():
            position = torch.tensor(pose.position, dtype=torch.float32)[None]
            quat = torch.tensor(pose.orientation, dtype=torch.float32)[None]
            _, chunk = self.policy(pixels[None], position, quat)  # (1, N, 3, H, W) in
            self.policy.actions_from_normalized(chunk).numpy()
        end = time.perf_counter()
        return {'preprocess': (t - start) * 1e3, 'model': (end - t) * 1e3,
                'total': (end - start) * 1e3}


def _load_policy(model: str, size: str, fusion: str, cameras: int):
    from vit_perception.config import PolicyConfig
    from vit_perception.model.checkpoint import load_checkpoint
    from vit_perception.model.policy import build_policy

    if model:
        return load_checkpoint(model)[0]
    hidden, layers, heads = SIZES[size]
    config = PolicyConfig.from_dict({
        'backbone': {'hidden_size': hidden, 'num_layers': layers, 'num_heads': heads},
        'fusion': {'mode': fusion, 'late_heads': heads},
        'cameras': [f'camera{i}' for i in range(cameras)],
        'preprocess': {'size': [224, 224]},
    })
    return build_policy(config).eval()


def _model_flops(policy, images, pose, naive) -> float:
    """FLOPs of one fp32 forward (ViT + fusion + heads), counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pixels = naive.processor(images=list(images), return_tensors='pt')['pixel_values']
    position = torch.tensor(pose.position, dtype=torch.float32)[None]
    quat = torch.tensor(pose.orientation, dtype=torch.float32)[None]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        policy(pixels[None], position, quat)
    return float(counter.get_total_flops())


def _matmul_gflops(device, dtype, repeats: int = 10) -> float:
    """Median GFLOP/s of an n x n matmul on `device` in `dtype`."""
    import torch

    n = 8192 if device.type == 'cuda' else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = []
    for _ in range(repeats + 2):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times[2:])) / 1e9


def _summarize(samples: list[dict]) -> dict:
    return {stage: {'p50': float(np.percentile([s[stage] for s in samples], 50)),
                    'p99': float(np.percentile([s[stage] for s in samples], 99))}
            for stage in samples[0]}


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def format_report(report: dict) -> str:
    lines = [f"bench: {report['model']}, {report['fusion']} fusion, {report['cameras']} x "
             f"{report['image']}, {report['iters']} iterations alternating, "
             f"device {report['device']} ({report['device_name']}, "
             f"{report['torch_threads']} threads)", '',
             f"{'stage':<12}{'naive p50':>12}{'naive p99':>12}{'engine p50':>12}"
             f"{'engine p99':>12}   (ms)"]
    stages = list(dict.fromkeys(list(report['naive_ms']) + list(report['engine_ms'])))
    stages.remove('total')
    for stage in stages + ['total']:
        naive = report['naive_ms'].get(stage)
        engine = report['engine_ms'].get(stage)

        def cell(stats, key):
            return f'{stats[key]:>12.2f}' if stats else f"{'-':>12}"

        lines.append(f'{stage:<12}{cell(naive, "p50")}{cell(naive, "p99")}'
                     f'{cell(engine, "p50")}{cell(engine, "p99")}')
    peak = ', '.join(f'{k} {v:.0f}' for k, v in report['matmul_peak_gflops'].items())
    achieved = report['achieved_gflops']
    lines += ['', f"speed-up (median end-to-end): {report['speedup_p50']:.2f}x "
                  f"(p99: {report['speedup_p99']:.2f}x), engine dtype "
                  f"{report['engine_dtype']}",
              f"model: {report['model_gflop']:.2f} GFLOP per observation; achieved "
              f"{achieved['naive_fp32']:.0f} GFLOP/s naive, {achieved['engine']:.0f} GFLOP/s "
              f'engine; matmul peak in this run: {peak} GFLOP/s']
    return '\n'.join(lines)
