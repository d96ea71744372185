"""Inference runtimes beside PyTorch: ONNX Runtime and OpenVINO, and the `auto` choice.

Each runtime runs the cached ONNX graphs of `model/onnx_graphs.py` (`policy`, and `refresh` in
late fusion) and hands back numpy arrays. The thread settings (one stream, a fixed thread count,
at most a short busy-wait between operators) were chosen by measurement, quiet and under CPU
contention (README, "Thread policy"). `choose_backend` is the pure rule behind
`engine.backend: auto`.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from vit_perception.errors import ConfigError

log = logging.getLogger(__name__)

RUNTIMES = ('openvino', 'onnxruntime')
BACKENDS = ('auto', 'torch') + RUNTIMES
INSTALL_HINT = "pip install 'vit_perception[runtimes]'"
# How long an idle ONNX Runtime worker busy-waits for the next operator before it sleeps.
# Measured (README "Thread policy"): faster than no spinning on a quiet CPU, without the longer
# tail under load that ORT's own (longer) default spin gives.
ORT_SPIN_US = 100


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def installed_runtimes() -> list[str]:
    """The optional runtimes importable here, in RUNTIMES order."""
    return [name for name in RUNTIMES if importable(name)]


def require_runtime(name: str) -> None:
    """One-line ConfigError when runtime `name` is not installed."""
    if name in RUNTIMES and not importable(name):
        raise ConfigError(f'engine.backend={name} needs the {name!r} package, which is not '
                          f'installed: {INSTALL_HINT}, or set engine.backend=torch')


def choose_backend(p99_ms: Mapping[str, float]) -> str:
    """The backend with the lowest p99 latency; on a tie the first listed (torch first)."""
    if not p99_ms:
        raise ValueError('choose_backend: no measurements')
    return min(p99_ms, key=lambda name: p99_ms[name])


def p99(samples: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), 99))


def alternating(names: Sequence[str], iters: int) -> Iterator[str]:
    """`iters` rounds over `names`, each round starting one later (no contender always first)."""
    for i in range(iters):
        shift = i % len(names)
        yield from list(names[shift:]) + list(names[:shift])


def measure_backends(run: Callable[[str], float], names: Sequence[str],
                     iters: int) -> dict[str, list[float]]:
    """{name: [run(name) for each round]}, the contenders alternating (see `alternating`)."""
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in alternating(names, iters):
        samples[name].append(run(name))
    return samples


class OnnxRuntimeSession:
    """One ONNX graph in ONNX Runtime: CPU, or CUDA/TensorRT providers for a CUDA device."""

    name = 'onnxruntime'

    def __init__(self, path: str | Path, *, device: str = 'cpu', threads: int = 0,
                 spin_us: int | None = ORT_SPIN_US):
        """spin_us: a worker's busy-wait for the next operator before it sleeps (0: none; None:
        ORT's own default, which spins longer)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads  # 0 = ORT's default (one per physical core)
        options.inter_op_num_threads = 1
        # Long spins burn the cores other processes need; none at all puts every operator's
        # workers to sleep and wakes them for the next one. A short bound avoids both.
        options.add_session_config_entry('session.intra_op.allow_spinning',
                                         '0' if spin_us == 0 else '1')
        if spin_us:
            options.add_session_config_entry('session.intra_op.spin_duration_us', str(spin_us))
        self.providers = ort_providers(device)
        self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        self.precision = 'fp32'  # the engine's graphs are fp32; ORT's CPU kernels have no bf16

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(inputs))


def ort_providers(device: str) -> list[str]:
    """TensorRT, CUDA (when present and the device is CUDA), then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ['CPUExecutionProvider']
    if device.startswith('cuda'):
        wanted = ['TensorrtExecutionProvider', 'CUDAExecutionProvider'] + wanted
    return [p for p in wanted if p in available]


def on_own_thread(function, *args):
    """function(*args) on a short-lived thread; its result (or its exception).

    Measured: loading OpenVINO's CPU plugin (the first `Core.get_property('CPU', ...)` or
    `compile_model`) replaces the calling thread's signal stack (sigaltstack) with memory that is
    freed later, so the next signal delivered to that thread (a
    SIGTERM from `ros2 launch`, replay's SIGINT/SIGTERM handler) ended the process with a
    segmentation fault. Loaded and compiled on a thread of its own, the caller's signal stack is
    untouched.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


class OpenVinoSession:
    """One ONNX graph compiled by OpenVINO for the CPU; bf16 when asked and the CPU has it."""

    name = 'openvino'

    def __init__(self, path: str | Path, *, bf16: bool = False, threads: int = 0):
        on_own_thread(self._compile, path, bf16, threads)
        self._lock = threading.Lock()  # one infer request: one caller at a time

    def _compile(self, path: str | Path, bf16: bool, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        native_bf16 = 'BF16' in core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
        self.precision = 'bf16' if bf16 and native_bf16 else 'fp32'
        config = {
            'PERFORMANCE_HINT': 'LATENCY',
            'NUM_STREAMS': 1,
            # Pinned threads wait for their core when another process holds it (measured:
            # p99 several times higher on a shared CPU, README "Thread policy").
            'ENABLE_CPU_PINNING': False,
            # Explicit: OpenVINO picks bf16 by itself on AMX CPUs, even for an fp32 engine.
            'INFERENCE_PRECISION_HINT': 'bf16' if self.precision == 'bf16' else 'f32',
        }
        if threads:
            config['INFERENCE_NUM_THREADS'] = threads
        self.compiled = core.compile_model(str(path), 'CPU', config)
        self.request = self.compiled.create_infer_request()

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            results = self.request.infer(dict(inputs))
            return [np.array(results[output]) for output in self.compiled.outputs]


class RuntimeGraphs:
    """The `policy` (and late-fusion `refresh`) graphs of one checkpoint in one runtime."""

    def __init__(self, name: str, paths: Mapping[str, Path], *, device: str = 'cpu',
                 bf16: bool = False, threads: int = 0):
        require_runtime(name)
        if name == 'openvino':
            if device.startswith('cuda'):
                raise ConfigError('engine.backend=openvino runs on the CPU: set '
                                  'engine.device=cpu (or use onnxruntime / torch on CUDA)')
            sessions = {graph: OpenVinoSession(path, bf16=bf16, threads=threads)
                        for graph, path in paths.items()}
        elif name == 'onnxruntime':
            sessions = {graph: OnnxRuntimeSession(path, device=device, threads=threads)
                        for graph, path in paths.items()}
        else:
            raise ConfigError(f'engine.backend={name!r}: expected one of {BACKENDS}')
        self.name = name
        self.precision = sessions['policy'].precision
        self._policy = sessions['policy']
        self._refresh = sessions.get('refresh')

    def policy(self, pixels: np.ndarray, pose_features: np.ndarray) -> list[np.ndarray]:
        """(1, N, 3, H, W), (1, F) fp32 -> embedding (1, E), chunk (1, H, A)[, tokens]."""
        return self._policy.run({'pixels': pixels, 'pose_features': pose_features})

    def refresh(self, image_tokens: np.ndarray, pose_features: np.ndarray) -> list[np.ndarray]:
        """(1, N * T, D), (1, F) -> embedding (1, E), chunk (1, H, A)."""
        return self._refresh.run({'image_tokens': image_tokens, 'pose_features': pose_features})
