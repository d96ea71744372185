"""`vit-perception bench`: the naive HF pipeline and every engine backend, same inputs, one run.

Naive = what a user writes from the HF docs: `ViTImageProcessor` on the decoded image, then the
same policy (ViT + pose tokens + heads) in fp32 eager mode. Engine backends = zero-copy decode and
preprocessing on the device, then the policy in torch (the engine's dtype, optionally
torch.compile), OpenVINO or ONNX Runtime (the exported ONNX graphs). All contenders alternate
iteration by iteration, each round starting with the next one, so all see the same machine state.
`--load N` repeats the measurement while N busy-loop processes compete for the CPU. Measured in
the same run: the fp32 and bf16 matmul peaks, each contender's GFLOP/s and % of its peak.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading
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
    parser.add_argument('--backends', default='', help='comma-separated engine backends to '
                        'compare (default: torch and every installed runtime: openvino, '
                        'onnxruntime)')
    parser.add_argument('--load', type=int, default=0, metavar='N', help='measure again while N '
                        'busy-loop processes compete for the CPU (p50/p99 under contention)')
    parser.add_argument('--threads', default='0', help='intra-op threads for torch and the '
                        "runtimes (engine.threads; default 0: each library's own default); a "
                        'comma-separated list (e.g. 0,1) benchmarks every backend at each count, '
                        'alternating in the same run')
    parser.add_argument('--nice', type=int, default=0, help="nice value of the bench's threads "
                        '(engine.nice; default 0: as started); the --load busy loops keep the '
                        "value the bench started with, so -10 measures a node that has the CPU "
                        'first (needs CAP_SYS_NICE)')
    parser.add_argument('--cache-dir', default='', help='ONNX graph cache (default '
                        '$XDG_CACHE_HOME/vit_perception/onnx)')
    parser.add_argument('--json', action='store_true', help='print JSON only')
    live_bench.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from vit_perception.config import NICE_RANGE
    from vit_perception.errors import ConfigError

    if args.live or args.soak:
        if args.nice:
            raise ConfigError('--nice applies to the in-process bench; for --live/--soak start '
                              'the bench with `nice -n N` (the node inherits it)')
        return live_bench.run(args)

    try:
        width, height = (int(v) for v in args.image.lower().split('x'))
    except ValueError:
        raise ConfigError(f'--image {args.image!r}: expected WIDTHxHEIGHT, e.g. 640x480') from None
    if args.iters < 1 or args.cameras < 1:
        raise ConfigError('--iters and --cameras must be >= 1')
    try:
        threads = [int(v) for v in args.threads.split(',')]
    except ValueError:
        raise ConfigError(f'--threads {args.threads!r}: expected a count or a comma-separated '
                          'list of counts, e.g. 0,1') from None
    if not NICE_RANGE[0] <= args.nice <= 0:
        raise ConfigError(f'--nice {args.nice}: expected {NICE_RANGE[0]}..0 (0: as started; a '
                          'positive value would put the contenders behind the busy loops)')
    if args.load < 0 or min(threads) < 0 or len(set(threads)) != len(threads):
        raise ConfigError('--load and --threads must be >= 0 (thread counts without repeats)')
    backends = [b for b in args.backends.split(',') if b] if args.backends else None
    report = benchmark(model=args.model, size=args.size, fusion=args.fusion,
                       cameras=args.cameras, width=width, height=height, iters=args.iters,
                       warmup=args.warmup, device=args.device, dtype=args.dtype,
                       compile=args.compile, backends=backends, load=args.load,
                       threads=threads, nice=args.nice, cache_dir=args.cache_dir,
                       progress=None if args.json else lambda text: print(text, file=sys.stderr))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def benchmark(*, model='', size='small', fusion='early', cameras=1, width=640, height=480,
              iters=30, warmup=3, device='auto', dtype='auto', compile=False, backends=None,
              load=0, threads=(0,), nice=0, cache_dir='', progress=None) -> dict:
    """Run every contender alternately (quiet, then under `load`); return the report dict.

    `nice` (0: unchanged) is set on the whole process first, so every contender runs at it; the
    busy loops run at the nice value the process started with.

    Contenders: the naive pipeline and an engine per backend and per count in `threads` (named
    `backend` for one count, `backend@N` / `backend@default` for several).
    """
    import torch

    from vit_perception.core import priority, runtimes
    from vit_perception.core.engine import (
        Engine,
        cpu_has_fast_bf16,
        dtype_name,
        resolve_device,
        resolve_dtype,
    )
    from vit_perception.core.types import ImageFrame, Observation, PoseSample
    from vit_perception.errors import ConfigError

    start_nice = priority.current_nice()
    if nice:
        priority.set_nice(nice, '--nice')
    dev = resolve_device(device)
    default_threads = torch.get_num_threads()
    if backends is None:
        backends = ['torch', *(name for name in runtimes.installed_runtimes()
                               if dev.type == 'cpu' or name == 'onnxruntime')]
    for name in backends:
        if name not in runtimes.BACKENDS or name == 'auto':
            raise ConfigError(f'--backends {name!r}: expected names from torch, '
                              f'{", ".join(runtimes.RUNTIMES)}')
        runtimes.require_runtime(name)
    policy = load_policy(model, size, fusion, cameras)
    naive = NaivePipeline(copy.deepcopy(policy).float().eval())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(cameras)]
    frames = tuple(ImageFrame(stamp_ns=0, frame_id='camera', data=img.tobytes(), height=height,
                              width=width, encoding='rgb8', step=width * 3, camera=i)
                   for i, img in enumerate(images))
    engines, engine_threads, requested = {}, {}, {}  # label -> engine, resolved, asked count
    for count in threads:
        for name in backends:
            label = name if len(threads) == 1 else f'{name}@{count or "default"}'
            if progress:
                progress(f'bench: building the {label} engine (export and warm-up included)...')
            torch.set_num_threads(count or default_threads)
            engines[label] = Engine(copy.deepcopy(policy), device=device, dtype=dtype,
                                    compile=compile and name == 'torch', warmup_iters=warmup,
                                    warmup_frames=frames, backend=name, cache_dir=cache_dir,
                                    threads=count)
            engine_threads[label] = count or default_threads
            requested[label] = count
    torch.set_num_threads(threads[0] or default_threads)
    pose = PoseSample(0, 'base', np.array([0.4, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]))
    obs = Observation(stamp_ns=0, frames=frames, poses=(pose,),
                      proprio=np.zeros(len(policy.config.pose.proprio_names)))
    for _ in range(warmup):
        naive(images, pose)

    def engine_call(label):
        def call():  # torch's pool is process-wide: each engine runs with its own count
            torch.set_num_threads(engine_threads[label])
            return engines[label].infer(obs).timings_ms
        return call

    def naive_call():
        torch.set_num_threads(threads[0] or default_threads)
        return naive(images, pose)

    calls = {'naive': naive_call, **{label: engine_call(label) for label in engines}}
    engine_dtype = resolve_dtype(dtype, dev)
    native_bf16 = dev.type == 'cuda' or cpu_has_fast_bf16()
    if progress:
        progress('bench: measuring the matmul peaks (before and after the contenders)...')
    peaks = [_matmul_peaks(dev, engine_dtype, native_bf16, default_threads)]
    if progress:
        progress(f'bench: {iters} alternating iterations of {", ".join(calls)}...')
    quiet = runtimes.measure_backends(lambda name: calls[name](), list(calls), iters)
    loaded = None
    if load:
        # Bounded: the busy loops end by themselves after a generous multiple of the quiet run.
        quiet_seconds = sum(_summarize(v)['total']['p99'] for v in quiet.values()) * iters / 1e3
        if progress:
            progress(f'bench: again with {load} busy-loop processes competing for the CPU...')
        with busy_load(load, seconds=min(1800.0, 60.0 + 20.0 * quiet_seconds),
                       nice=start_nice):
            loaded = runtimes.measure_backends(lambda name: calls[name](), list(calls), iters)
    # Two windows minutes apart, the best of each precision: one short window can fall entirely
    # on a slow stretch of a shared machine.
    peaks.append(_matmul_peaks(dev, engine_dtype, native_bf16, default_threads))
    peak = {name: max(window[name] for window in peaks) for name in peaks[0]}
    flops = _model_flops(naive.policy, images, pose, naive)
    precisions = {'naive': 'fp32', **{name: _precision(engine)
                                     for name, engine in engines.items()}}
    contenders = {name: _contender(quiet[name], loaded and loaded[name], precisions[name],
                                   flops, peak) for name in calls}
    torch.set_num_threads(threads[0] or default_threads)
    reference_name = next((label for label in engines if label.split('@')[0] == 'torch'), None)
    if reference_name:  # parity on the benchmarked input: each backend vs the torch engine
        reference = engines[reference_name].infer(obs).chunk
        for name, engine in engines.items():
            difference = np.abs(engine.infer(obs).chunk - reference).max()
            contenders[name]['chunk_max_abs_diff_vs_torch'] = float(difference)
    naive_stats = _summarize(quiet['naive'])
    report = {
        'device': str(dev),
        'device_name': _device_name(dev),
        'torch_threads': default_threads,
        'threads': list(threads),
        'nice': priority.current_nice(),
        'load_nice': start_nice,
        'engine_dtype': dtype_name(engine_dtype),
        'native_bf16': native_bf16,
        'compile': compile,
        'model': model or f'random-init ViT-{size[0].upper()}/16 224',
        'fusion': fusion,
        'cameras': cameras,
        'image': f'{width}x{height} rgb8',
        'iters': iters,
        'load': load,
        'model_gflop': flops / 1e9,
        'matmul_peak_gflops': peak,
        'contenders': contenders,
        'naive_ms': naive_stats,
    }
    if reference_name:  # the naive-vs-engine comparison (the torch engine)
        engine_stats = _summarize(quiet[reference_name])
        report.update({
            'engine_ms': engine_stats,
            'speedup_p50': naive_stats['total']['p50'] / engine_stats['total']['p50'],
            'speedup_p99': naive_stats['total']['p99'] / engine_stats['total']['p99'],
            'achieved_gflops': {'naive_fp32': contenders['naive']['gflops'],
                                'engine': contenders[reference_name]['gflops']},
        })
    # By the count asked for: '0' (the default) and '1' stay apart where the default is 1 thread.
    groups = {count: [label for label in engines if requested[label] == count]
              for count in threads}
    report['targets'] = _targets(contenders, groups[threads[0]], peak, report['native_bf16'])
    if len(threads) > 1:  # the targets for each thread count (its own quiet p50 as reference)
        report['targets_by_threads'] = {
            str(count): _targets(contenders, group, peak, report['native_bf16'])
            for count, group in groups.items()}
    return report


BUSY_LOOP = """
import os, sys, time
parent, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
x = 0
while time.monotonic() < deadline and os.getppid() == parent:
    for _ in range(100000):
        x += 1
"""


@contextlib.contextmanager
def busy_load(processes: int, seconds: float, nice: int | None = None):
    """`processes` single-core busy loops, stopped on exit (and by themselves after `seconds`
    or when this process is gone), at nice value `nice` (None: this thread's, which they
    inherit; a higher one is always allowed). SIGTERM meanwhile ends the bench like Ctrl-C."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) \
        if threading.current_thread() is threading.main_thread() else None
    children = []
    try:
        for _ in range(processes):
            children.append(subprocess.Popen(
                [sys.executable, '-c', BUSY_LOOP, str(os.getpid()), f'{seconds:.0f}'],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
            if nice is not None:
                os.setpriority(os.PRIO_PROCESS, children[-1].pid, nice)
        time.sleep(0.5)  # let them start spinning
        yield children
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _model_ms(sample: dict) -> float:
    """Model-only time of one sample: the naive 'model' stage, or encode + fuse + heads."""
    if 'model' in sample:
        return sample['model']
    return sample['encode'] + sample['fuse'] + sample['heads']


def _contender(quiet: list[dict], loaded: list[dict] | None, precision: str, flops: float,
               peak: dict) -> dict:
    model = [_model_ms(s) for s in quiet]
    total = [s['total'] for s in quiet]
    model_p50 = float(np.percentile(model, 50))
    gflops = flops / 1e9 / (model_p50 / 1e3)
    result = {
        'precision': precision,
        'total_ms': _percentiles(total),
        'model_ms': _percentiles(model),
        'stages_ms': _summarize(quiet),
        'end_to_end_over_model': float(np.percentile(total, 50)) / model_p50,
        'gflops': gflops,
        'percent_of_peak': 100.0 * gflops / peak[precision],
    }
    if loaded:
        result['loaded_total_ms'] = _percentiles([s['total'] for s in loaded])
        result['loaded_p99_over_quiet_p50'] = (result['loaded_total_ms']['p99']
                                               / result['total_ms']['p50'])
    return result


def _targets(contenders: dict, engines: list[str], peak: dict, native_bf16: bool) -> dict:
    """The issue's targets for the backend `auto` would keep (lowest quiet p99)."""
    if not engines:
        return {}
    chosen = min(engines, key=lambda name: contenders[name]['total_ms']['p99'])
    mine = contenders[chosen]
    peers = [name for name in engines if name != chosen]
    targets = {
        'chosen': chosen,
        # Against an emulated bf16 matmul (no native bf16) the ratio means nothing: None.
        'chosen_percent_of_bf16_peak': (100.0 * mine['gflops'] / peak['bf16']
                                        if native_bf16 else None),
        'chosen_percent_of_own_peak': mine['percent_of_peak'],
        'native_bf16': native_bf16,
        'end_to_end_over_model': mine['end_to_end_over_model'],
    }
    if peers:
        fastest = min(peers, key=lambda name: contenders[name]['total_ms']['p50'])
        targets['fastest_peer'] = fastest
        targets['chosen_p50_over_fastest_peer_p50'] = (mine['total_ms']['p50']
                                                      / contenders[fastest]['total_ms']['p50'])
    if 'loaded_total_ms' in mine:
        targets['loaded_p99_over_quiet_p50'] = mine['loaded_p99_over_quiet_p50']
    return targets


def _precision(engine) -> str:
    from vit_perception.core.engine import dtype_name

    return engine.runtime.precision if engine.runtime is not None else dtype_name(engine.dtype)


def _percentiles(values: list[float]) -> dict:
    return {'p50': float(np.percentile(values, 50)), 'p99': float(np.percentile(values, 99))}


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


def load_policy(model: str, size: str, fusion: str, cameras: int):
    """The checkpoint at `model`, or a random-init ViT of `size` (speed ignores the weights).

    The random init is seeded, so every run has the same weights and reuses the ONNX graphs
    cached by content hash instead of exporting (and storing) another ~90 MB graph.
    """
    import torch

    from vit_perception.model.checkpoint import load_checkpoint
    from vit_perception.model.config import PolicyConfig
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
    with torch.random.fork_rng():  # the caller's random state stays as it was
        torch.manual_seed(0)
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
    """Best GFLOP/s of an n x n matmul on `device` in `dtype` over `repeats` timed calls.

    A peak is the best the machine gives: the fastest call, not the median of a short window,
    which a pre-empted core covers entirely (measured on one 2-core VM: medians of 95 to 157
    GFLOP/s fp32 between runs).
    """
    import torch

    n = 8192 if device.type == 'cuda' else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = []
    for _ in range(repeats + 1):  # the first call is untimed: allocation, kernel selection
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times[1:]) / 1e9


def _matmul_peaks(device, engine_dtype, native_bf16: bool, threads: int) -> dict:
    """{'fp32', 'bf16'[, 'fp16']: GFLOP/s} with `threads` torch threads (all cores)."""
    import torch

    from vit_perception.core.engine import DTYPES

    torch.set_num_threads(threads)
    names = ['fp32', 'bf16'] + (['fp16'] if engine_dtype == DTYPES['fp16'] else [])
    # Emulated bf16 runs at ~1 GFLOP/s (2 s a call): one timed call shows it, ten would take 20 s.
    return {name: _matmul_gflops(device, DTYPES[name], 10 if name != 'bf16' or native_bf16 else 1)
            for name in names}


def _summarize(samples: list[dict]) -> dict:
    return {stage: _percentiles([s[stage] for s in samples]) for stage in samples[0]}


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def format_report(report: dict) -> str:
    threads = (f", --threads {','.join(map(str, report['threads']))}"
               if report['threads'] != [0] else '')
    nice = (f", nice {report['nice']} (busy loops: {report['load_nice']})"
            if report['nice'] != report['load_nice'] else '')
    lines = [f"bench: {report['model']}, {report['fusion']} fusion, {report['cameras']} x "
             f"{report['image']}, {report['iters']} iterations alternating, "
             f"device {report['device']} ({report['device_name']}, "
             f"{report['torch_threads']} torch threads by default{threads}{nice})", '']
    if 'engine_ms' in report:
        lines += _stage_table(report) + ['']
    load = report['load']
    header = (f"{'contender':<20}{'precision':>10}{'p50 ms':>9}{'p99 ms':>9}{'model p50':>11}"
              f"{'e2e/model':>11}{'GFLOP/s':>9}{'% peak':>8}{'|diff|':>9}")
    if load:
        header += f"{f'load {load}: p50':>15}{'p99':>8}{'p99/quiet p50':>15}"
    lines.append(header)
    for name, c in report['contenders'].items():
        row = (f"{name:<20}{c['precision']:>10}{c['total_ms']['p50']:>9.1f}"
               f"{c['total_ms']['p99']:>9.1f}{c['model_ms']['p50']:>11.1f}"
               f"{c['end_to_end_over_model']:>11.3f}{c['gflops']:>9.0f}"
               f"{c['percent_of_peak']:>8.0f}"
               f"{c.get('chunk_max_abs_diff_vs_torch', float('nan')):>9.1e}")
        if load:
            row += (f"{c['loaded_total_ms']['p50']:>15.1f}{c['loaded_total_ms']['p99']:>8.1f}"
                    f"{c['loaded_p99_over_quiet_p50']:>15.2f}")
        lines.append(row)
    peak = ', '.join(f'{k} {v:.3g}' for k, v in report['matmul_peak_gflops'].items())
    lines += ['', f"model: {report['model_gflop']:.2f} GFLOP per observation; matmul peak in "
                  f'this run: {peak} GFLOP/s (% peak: against the peak of the precision; '
                  '|diff|: max |chunk - torch engine chunk| on the benchmarked input)']
    if 'speedup_p50' in report:
        lines.append(f"naive -> torch engine speed-up (median end-to-end): "
                     f"{report['speedup_p50']:.2f}x (p99: {report['speedup_p99']:.2f}x), "
                     f"engine dtype {report['engine_dtype']}")
    by_threads = report.get('targets_by_threads') or {'': report['targets']}
    for count, targets in by_threads.items():
        lines += _target_lines(targets, f' (threads {count or "default"})' if count else '')
    return '\n'.join(lines)


def _stage_table(report: dict) -> list[str]:
    lines = [f"{'stage':<12}{'naive p50':>12}{'naive p99':>12}{'engine p50':>12}"
             f"{'engine p99':>12}   (ms; engine = the torch backend)"]
    stages = list(dict.fromkeys(list(report['naive_ms']) + list(report['engine_ms'])))
    stages.remove('total')
    for stage in stages + ['total']:
        naive = report['naive_ms'].get(stage)
        engine = report['engine_ms'].get(stage)

        def cell(stats, key):
            return f'{stats[key]:>12.2f}' if stats else f"{'-':>12}"

        lines.append(f'{stage:<12}{cell(naive, "p50")}{cell(naive, "p99")}'
                     f'{cell(engine, "p50")}{cell(engine, "p99")}')
    return lines


def _target_lines(targets: dict, among: str = '') -> list[str]:
    """The issue's targets, each with its measured value and whether it is met."""
    if not targets:
        return []

    def verdict(ok: bool) -> str:
        return 'met' if ok else 'NOT met'

    chosen = targets['chosen']
    lines = ['', f'targets for {chosen} (lowest quiet p99{among}, what engine.backend auto '
                 'keeps):']
    if 'fastest_peer' in targets:
        ratio = targets['chosen_p50_over_fastest_peer_p50']
        lines.append(f"  quiet p50 vs the fastest peer ({targets['fastest_peer']}): {ratio:.2f}x "
                     f'(target <= 1: {verdict(ratio <= 1.0)})')
    pct = targets['chosen_percent_of_bf16_peak']
    if targets['native_bf16']:
        lines.append(f'  achieved / bf16 matmul peak: {pct:.0f} % (target >= 75 %: '
                     f'{verdict(pct >= 75)})')
    else:
        lines.append(f'  achieved / bf16 matmul peak: n/a, no native bf16 on this device (its '
                     f"bf16 matmul is emulated); / its own precision's peak: "
                     f"{targets['chosen_percent_of_own_peak']:.0f} %")
    if 'loaded_p99_over_quiet_p50' in targets:
        ratio = targets['loaded_p99_over_quiet_p50']
        lines.append(f'  p99 under load / quiet p50: {ratio:.2f}x (target <= 3: '
                     f'{verdict(ratio <= 3.0)})')
    ratio = targets['end_to_end_over_model']
    lines.append(f'  end-to-end (bytes in -> chunk out) / model only, p50: {ratio:.3f}x '
                 f'(target <= 1.15: {verdict(ratio <= 1.15)})')
    return lines
