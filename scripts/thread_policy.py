"""Measure thread settings of torch, ONNX Runtime and OpenVINO, quiet and under CPU contention.

    python3 scripts/thread_policy.py --size small --iters 30 --load 2
    OMP_WAIT_POLICY=PASSIVE python3 scripts/thread_policy.py ...   # libgomp threads sleep
    python3 scripts/thread_policy.py --only torch --load 0          # one side of a process A/B
    python3 scripts/thread_policy.py --nice -10 --only ort          # + the defaults at nice -10

torch loads here before vit_perception (which sets OMP_WAIT_POLICY=PASSIVE), so without the
variable libgomp's own default applies: threads spin a while before they sleep.

Model only (the policy graph on preprocessed pixels), fp32, all variants alternating in one
process, then again with N busy-loop processes (the bench's `busy_load`). The engine's defaults
(core/runtimes.py) were chosen from this table; README "Benchmarks" has the figures.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import openvino as ov
import torch

from vit_perception.core import priority, runtimes
from vit_perception.model.onnx_graphs import cached_graphs, example_inputs
from vit_perception.tools.bench import SIZES, busy_load, load_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', choices=sorted(SIZES), default='small')
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--load', type=int, default=2)
    parser.add_argument('--cache-dir', default='')
    parser.add_argument('--only', choices=['torch', 'ort', 'ov'], help='one library only')
    parser.add_argument('--nice', type=int, default=0, help='also each library at its default '
                        'threads with this nice value (the busy loops and the other variants '
                        'keep the one this process started with; below it needs CAP_SYS_NICE)')
    args = parser.parse_args()

    policy = load_policy('', args.size, 'early', 1)
    path = cached_graphs(policy, 'fp32', args.cache_dir)['policy']
    (pixels, features), _ = example_inputs(policy, 'fp32')
    pixels = torch.randn_like(pixels)
    feeds = {'pixels': pixels.numpy(), 'pose_features': features.numpy()}
    cores = os.cpu_count() or 1

    def torch_call(threads):
        def call():
            torch.set_num_threads(threads)
            with torch.inference_mode():
                policy.early_features(pixels, policy.pose_tokenizer(features))
        return call

    def ort_call(threads, spin_us):
        return runtimes.OnnxRuntimeSession(path, threads=threads, spin_us=spin_us).run

    def ov_call(threads, pinning):
        compiled = ov.Core().compile_model(str(path), 'CPU', {
            'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1, 'INFERENCE_PRECISION_HINT': 'f32',
            'INFERENCE_NUM_THREADS': threads, 'ENABLE_CPU_PINNING': pinning})
        request = compiled.create_infer_request()
        return lambda: request.infer(feeds)

    calls = {f'torch threads={cores}': torch_call(cores), 'torch threads=1': torch_call(1)}
    thread_counts = sorted({cores, 1}, reverse=True)
    for threads in thread_counts:
        for label, spin_us in ((f'spin {runtimes.ORT_SPIN_US}us', runtimes.ORT_SPIN_US),
                               ('no-spin', 0)):
            calls[f'ort threads={threads} {label}'] = (lambda run: lambda: run(feeds))(
                ort_call(threads, spin_us))
        calls[f'ov threads={threads} pinned'] = ov_call(threads, True)
        calls[f'ov threads={threads} unpinned'] = ov_call(threads, False)
    # ORT's own default spin last: measured, the ORT session created right after one of these
    # ran 15-65 % slower, whatever its own settings.
    for threads in thread_counts:
        calls[f'ort threads={threads} spin (ORT default)'] = (lambda run: lambda: run(feeds))(
            ort_call(threads, None))
    start_nice = priority.current_nice()
    nices = {}  # variant -> its nice value, set on every thread before each call
    if args.nice:
        ort_engine = f'ort threads={cores} spin {runtimes.ORT_SPIN_US}us'  # the engine's setting
        for name in (f'torch threads={cores}', ort_engine, f'ov threads={cores} unpinned'):
            nices[f'{name} nice {args.nice}'] = args.nice
            calls[f'{name} nice {args.nice}'] = calls[name]
    calls = {name: call for name, call in calls.items()
             if args.only is None or name.startswith(args.only)}
    for call in calls.values():  # warm-up
        call()
        call()

    def timed(name):
        priority.set_nice(nices.get(name, start_nice))
        start = time.perf_counter()
        calls[name]()
        return (time.perf_counter() - start) * 1e3

    quiet = runtimes.measure_backends(timed, list(calls), args.iters)
    loaded = quiet
    if args.load:
        with busy_load(args.load, seconds=1800, nice=start_nice):
            loaded = runtimes.measure_backends(timed, list(calls), args.iters)
    print(f'ViT-{args.size[0].upper()}/16 224 early fusion, model only, fp32, {args.iters} '
          f'alternating iterations, {cores} cores, OMP_WAIT_POLICY when torch loaded: '
          f'{wait_policy_at_start()}')
    print(f"{'variant':<42}{'quiet p50':>10}{'p99':>8}{f'load {args.load}: p50':>15}{'p99':>8}"
          f"{'p99/quiet p50':>15}")
    for name in calls:
        q50, q99 = np.percentile(quiet[name], [50, 99])
        l50, l99 = np.percentile(loaded[name], [50, 99])
        print(f'{name:<42}{q50:>10.1f}{q99:>8.1f}{l50:>15.1f}{l99:>8.1f}{l99 / q50:>15.2f}')


def wait_policy_at_start() -> str:
    """OMP_WAIT_POLICY as this process started (vit_perception's import sets it later)."""
    with open('/proc/self/environ', 'rb') as f:
        for entry in f.read().split(b'\0'):
            if entry.startswith(b'OMP_WAIT_POLICY='):
                return entry.split(b'=', 1)[1].decode()
    return '(unset: libgomp spins a while, then sleeps)'


if __name__ == '__main__':
    main()
