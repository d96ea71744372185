"""Engine: one observation in, embedding + action chunk out, as fast as this device allows.

decode (zero-copy views) -> preprocess on the device -> ViT with pose tokens -> heads, under
`torch.inference_mode`, in fp32/bf16/fp16, optionally `torch.compile`d, warmed up at load time.
Per-stage timings come with every result. Late fusion caches the image tokens of the last
observation so `refresh` can re-run only the pose part with a newer pose (control rate).

Backends (`engine.backend`): `torch` runs the policy module; `openvino` / `onnxruntime` run its
ONNX graphs (`model/onnx_graphs.py`, cached per checkpoint and dtype) after the same torch
preprocessing; `auto` times every installed one during warm-up and keeps the lowest p99.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vit_perception.config import EngineConfig
from vit_perception.core import priority, runtimes
from vit_perception.core.images import image_to_array
from vit_perception.core.preprocess import Preprocessor
from vit_perception.core.types import ActionChunkResult, ImageFrame, Observation, PoseSample
from vit_perception.errors import CheckpointError, ConfigError, ImageError, PoseError
from vit_perception.model.config import PolicyConfig
from vit_perception.model.onnx_graphs import cached_graphs
from vit_perception.model.policy import VisionPosePolicy
from vit_perception.model.pose import pose_features

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / 'data' / 'default_checkpoint'
STAGES = ('decode', 'upload', 'preprocess', 'encode', 'fuse', 'heads', 'total')
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# `engine.backend: auto` times each installed backend over at least this many alternating passes.
AUTO_MIN_ITERS = 10
_said_torch_only = False  # `auto` without the optional runtimes says so once per process


def resolve_device(name: str = 'auto') -> torch.device:
    """'auto' -> cuda when present, else cpu."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f'engine.device={name!r}: expected auto, cpu, cuda or cuda:N') from None
    if device.type == 'cuda' and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f'engine.device={name!r}: this machine has '
                          f'{torch.cuda.device_count()} CUDA devices (torch {torch.__version__}); '
                          'use engine.device=cpu or auto')
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise ConfigError(f'engine.device={name!r}: MPS is not available here; use cpu or auto')
    return device


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bf16' (the names of engine.dtype)."""
    return {value: key for key, value in DTYPES.items()}.get(dtype, str(dtype))


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX)."""
    try:
        flags = Path('/proc/cpuinfo').read_text()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if name == 'auto':
        fast = device.type == 'cuda' or (device.type == 'cpu' and cpu_has_fast_bf16())
        return torch.bfloat16 if fast else torch.float32
    return DTYPES[name]


class Engine:
    """Runs a VisionPosePolicy on one observation at a time (see module docstring)."""

    stage_names = STAGES

    def __init__(self, policy: VisionPosePolicy, *, device: str = 'auto', dtype: str = 'auto',
                 compile: bool = False, warmup_iters: int = 3,
                 warmup_frames: Sequence[ImageFrame] | None = None, backend: str = 'torch',
                 cache_dir: str | Path = '', threads: int = 0, nice: int = 0):
        if backend not in runtimes.BACKENDS:
            raise ConfigError(f'engine.backend={backend!r}: expected one of {runtimes.BACKENDS}')
        self.config: PolicyConfig = policy.config
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # Built from the policy before it is cast: the ONNX graphs are exported in fp32 (the
        # runtimes apply their own precision: OpenVINO's bf16 hint follows engine.dtype).
        if threads:  # process-wide: torch has one intra-op pool; the runtimes get their own
            torch.set_num_threads(threads)
        if nice:  # process-wide, before the runtimes start their thread pools
            try:
                priority.set_nice(nice, 'engine.nice')
            except priority.NiceNotPermitted as error:  # a slower node, not a stopped one
                log.warning('%s', error)
        self._runtimes = self._build_runtimes(policy, backend, cache_dir, threads)
        self.runtime: runtimes.RuntimeGraphs | None = None  # None = the torch path
        stats = policy.normalization()
        self.policy = policy.to(self.device, self.dtype).eval()
        # Normalization stays fp32 whatever the model dtype (pose positions need the precision).
        self.policy.pose_tokenizer.normalizer.float()
        self.policy.action_normalizer.float()
        self.policy.set_normalization(stats)
        # The runtimes take fp32 pixels; the torch path casts them to self.dtype.
        self.preprocessor = Preprocessor(self.config.preprocess, self.device,
                                         self.dtype if backend == 'torch' else torch.float32)
        self._encode_early = self.policy.early_features
        self._encode_images = self.policy.encode_images
        self._fuse = self.policy.fuse
        if compile:
            # Inductor freezing: weights become constants, folded and prepacked for oneDNN (bf16
            # ViT-S on CPU: ~25 % faster than compiling without it). Sound for an inference
            # process: the engine never trains or swaps weights. A process-wide Inductor setting
            # (torch.compile's `options` does not reach it), read when the warm-up compiles.
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            self._encode_early = torch.compile(self._encode_early, dynamic=False)
            self._encode_images = torch.compile(self._encode_images, dynamic=False)
            self._fuse = torch.compile(self._fuse, dynamic=False)
        # Late fusion cache: (observation stamp, image tokens (1, N * T, D)), replaced whole so a
        # refresh on another thread never sees tokens of one observation with another's stamp.
        # A torch tensor on the torch path, a numpy array on a runtime's.
        self._image_tokens: tuple[int, torch.Tensor | np.ndarray] | None = None
        self.backend = 'torch'
        self.use_backend(self._choose_backend(warmup_iters, warmup_frames)
                         if backend == 'auto' else backend)
        self.warmup(warmup_iters, warmup_frames)

    def _build_runtimes(self, policy: VisionPosePolicy, backend: str, cache_dir: str | Path,
                        threads: int) -> dict[str, runtimes.RuntimeGraphs]:
        """{name: RuntimeGraphs} for the runtime `backend` names, or every installed one."""
        global _said_torch_only
        if backend == 'torch':
            return {}
        if backend == 'auto':
            names = runtimes.installed_runtimes()
            if self.device.type != 'cpu':  # OpenVINO runs on the CPU only
                names = [name for name in names if name != 'openvino']
            if not names:
                if not _said_torch_only:
                    log.info('engine.backend auto: no optional runtime installed (%s for '
                             'OpenVINO and ONNX Runtime); using torch',
                             runtimes.INSTALL_HINT)
                    _said_torch_only = True
                return {}
        else:
            runtimes.require_runtime(backend)
            names = [backend]
        paths = cached_graphs(policy, 'fp32', cache_dir)
        bf16 = self.dtype == torch.bfloat16
        return {name: runtimes.RuntimeGraphs(name, paths, device=str(self.device), bf16=bf16,
                                             threads=threads) for name in names}

    def use_backend(self, name: str) -> None:
        """Run `name` ('torch' or a runtime built at construction) from now on."""
        if name != 'torch' and name not in self._runtimes:
            raise ConfigError(f'engine backend {name!r} was not built; built: '
                              f"{['torch', *self._runtimes]}")
        self.runtime = self._runtimes.get(name)
        self.backend = name
        self._image_tokens = None

    @property
    def available_backends(self) -> list[str]:
        """'torch' and the runtimes built at construction."""
        return ['torch', *self._runtimes]

    def _choose_backend(self, iters: int, frames: Sequence[ImageFrame] | None) -> str:
        """`auto`: warm every backend, time them alternating, keep the lowest p99; log once."""
        names = self.available_backends
        if len(names) == 1:
            return 'torch'
        obs = self._warmup_observation(frames)
        for name in names:  # untimed: first calls compile, allocate and page in
            self.use_backend(name)
            self.warmup(max(iters, 1), frames)

        def timed(name: str) -> float:
            self.use_backend(name)
            return self.infer(obs).timings_ms['total']

        samples = runtimes.measure_backends(timed, names, max(iters, AUTO_MIN_ITERS))
        p99_ms = {name: runtimes.p99(values) for name, values in samples.items()}
        chosen = runtimes.choose_backend(p99_ms)
        log.info('engine.backend auto: chose %s (p99 ms over %d alternating passes: %s)', chosen,
                 len(samples[chosen]), ', '.join(f'{n} {v:.1f}' for n, v in p99_ms.items()))
        self._runtimes = {chosen: self._runtimes[chosen]} if chosen in self._runtimes else {}
        return chosen

    @classmethod
    def from_checkpoint(cls, path: str | Path = '', **kwargs) -> Engine:
        """Load a checkpoint directory ('' = the checkpoint shipped with the package)."""
        from vit_perception.model.checkpoint import load_checkpoint

        if not path:
            if not DEFAULT_CHECKPOINT.is_dir():
                raise CheckpointError(f'the embedded default checkpoint {DEFAULT_CHECKPOINT} is '
                                      'missing: pass --model DIR or regenerate it (README)')
            path = DEFAULT_CHECKPOINT
        policy, _ = load_checkpoint(path)
        return cls(policy, **kwargs)

    @classmethod
    def from_config(cls, config: EngineConfig, **kwargs) -> Engine:
        """The engine the node parameters `engine.*` describe (kwargs: e.g. warmup_frames)."""
        return cls.from_checkpoint(config.model, device=config.device, dtype=config.dtype,
                                   compile=config.compile, warmup_iters=config.warmup_iters,
                                   backend=config.backend, cache_dir=config.cache_dir,
                                   threads=config.threads, nice=config.nice, **kwargs)

    # -- properties the node core relies on ----------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def action_names(self) -> list[str]:
        return list(self.config.actions.names)

    @property
    def dt(self) -> float:
        return self.config.actions.dt

    @property
    def horizon(self) -> int:
        return self.config.actions.horizon

    @property
    def fusion(self) -> str:
        return self.config.fusion.mode

    @property
    def num_cameras(self) -> int:
        return len(self.config.cameras)

    # -- inference -----------------------------------------------------------------------------

    def infer(self, obs: Observation) -> ActionChunkResult:
        """One observation -> embedding (D,) and action chunk (H, A) in robot units.

        Raises ImageError / PoseError (nothing computed) on bad input.
        """
        if len(obs.frames) != self.num_cameras:
            raise ImageError(f'observation has {len(obs.frames)} camera frames, the checkpoint '
                             f'expects {self.num_cameras} ({self.config.cameras})')
        timings = {}
        start = t = time.perf_counter()
        decoded = [image_to_array(frame) for frame in obs.frames]
        position, quat, proprio = self._pose_tensors(obs.poses, obs.proprio)
        t = _lap(timings, 'decode', t, None)
        with torch.inference_mode():
            uploaded = self.preprocessor.upload(decoded)  # host -> device
            t = _lap(timings, 'upload', t, self.device)
            pixels = self.preprocessor.transform(uploaded).unsqueeze(0)  # (1, N, 3, H, W)
            t = _lap(timings, 'preprocess', t, self.device)
            if self.runtime is not None:
                embedding, chunk = self._infer_runtime(obs.stamp_ns, pixels, position, quat,
                                                       proprio)
                _lap(timings, 'encode', t, None)  # the whole graph: encode, fuse and heads
                timings['fuse'] = timings['heads'] = 0.0
                timings['total'] = (time.perf_counter() - start) * 1e3
                return ActionChunkResult(observation_stamp_ns=obs.stamp_ns, embedding=embedding,
                                         chunk=chunk, timings_ms=timings)
            pixels = pixels.to(self.dtype)
            pose_tokens = self.policy.pose_tokens(position, quat, proprio)  # (1, arms * K, D)
            if self.fusion == 'late':
                tokens = self._encode_images(pixels)  # (1, N * T, D)
                t = _lap(timings, 'encode', t, self.device)
                feature = self._fuse(tokens, pose_tokens)  # (1, D)
                self._image_tokens = (obs.stamp_ns, tokens)
                t = _lap(timings, 'fuse', t, self.device)
            else:
                feature = self._encode_early(pixels, pose_tokens)  # (1, D)
                t = _lap(timings, 'encode', t, self.device)
                timings['fuse'] = 0.0  # fused inside the ViT
            embedding, chunk = self._heads(feature)
            _lap(timings, 'heads', t, None)
        timings['total'] = (time.perf_counter() - start) * 1e3
        return ActionChunkResult(observation_stamp_ns=obs.stamp_ns, embedding=embedding,
                                 chunk=chunk, timings_ms=timings)

    def refresh(self, poses: Sequence[PoseSample], proprio: np.ndarray | None = None,
                observation_stamp_ns: int | None = None) -> np.ndarray | None:
        """Late fusion: (H, A) chunk from the cached image tokens + newer poses (one per arm)
        and joint positions.

        None in early-fusion mode, before the first `infer`, or when the cache does not hold the
        tokens of `observation_stamp_ns` (when given). Safe to call from another thread.
        """
        cache = self._image_tokens
        if self.fusion != 'late' or cache is None:
            return None
        stamp_ns, tokens = cache
        if observation_stamp_ns is not None and stamp_ns != observation_stamp_ns:
            return None
        position, quat, proprio_t = self._pose_tensors(poses, proprio)
        if self.runtime is not None:
            features = pose_features(position, quat, proprio_t).cpu().numpy()  # (1, F)
            return self.runtime.refresh(tokens, features)[1][0]
        with torch.inference_mode():
            feature = self._fuse(tokens, self.policy.pose_tokens(position, quat, proprio_t))
            return self._heads(feature)[1]

    def warmup(self, iters: int, frames: Sequence[ImageFrame] | None = None) -> None:
        """Run `iters` full passes on synthetic (or given) frames; clears the late cache."""
        if iters <= 0:
            return
        obs = self._warmup_observation(frames)
        for _ in range(iters):
            self.infer(obs)
            self.refresh(obs.poses, obs.proprio)
        self._image_tokens = None

    def _warmup_observation(self, frames: Sequence[ImageFrame] | None) -> Observation:
        frames = list(frames) if frames else [
            _synthetic_frame(480, 640, camera) for camera in range(self.num_cameras)]
        poses = tuple(PoseSample(0, 'warmup', np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]), arm)
                      for arm in range(len(self.config.pose.arms)))
        return Observation(stamp_ns=0, frames=tuple(frames), poses=poses,
                           proprio=np.zeros(len(self.config.pose.proprio_names)))

    # -- helpers -------------------------------------------------------------------------------

    def _infer_runtime(self, stamp_ns: int, pixels: torch.Tensor, position: torch.Tensor,
                       quat: torch.Tensor, proprio: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The runtime's policy graph on fp32 pixels (1, N, 3, H, W) -> embedding, chunk."""
        features = pose_features(position, quat, proprio).cpu().numpy()  # (1, F) fp32
        outputs = self.runtime.policy(pixels.cpu().numpy(), features)
        if self.fusion == 'late':
            self._image_tokens = (stamp_ns, outputs[2])  # (1, N * T, D)
        return outputs[0][0].astype(np.float32), outputs[1][0].astype(np.float32)

    def _heads(self, feature: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        embedding, chunk = self.policy.forward_head(feature)  # (1, E), (1, H, A) normalized
        chunk = self.policy.actions_from_normalized(chunk)  # (1, H, A) robot units
        return (embedding[0].float().cpu().numpy(), chunk[0].float().cpu().numpy())

    def _pose_tensors(self, poses: Sequence[PoseSample], proprio: np.ndarray | None):
        """Validate and move the arms' poses and the proprio scalars to the device:
        (1, N, 3), (1, N, 4), (1, P) float32."""
        arms = self.config.pose.arms
        if len(poses) != len(arms):
            raise PoseError(f'{len(poses)} poses: the checkpoint expects one per arm ({arms})')
        try:
            position = np.array([p.position for p in poses], dtype=np.float64)  # (N, 3)
            quat = np.array([p.orientation for p in poses], dtype=np.float64)  # (N, 4)
        except (AttributeError, TypeError, ValueError):
            raise PoseError('pose: expected position (3,) and quaternion xyzw (4,) per arm') \
                from None
        if position.shape != (len(arms), 3) or quat.shape != (len(arms), 4):
            raise PoseError(f'pose: expected position (3,) and quaternion xyzw (4,) per arm, got '
                            f'{position.shape} and {quat.shape}')
        if not (np.isfinite(position).all() and np.isfinite(quat).all()):
            raise PoseError('pose: position and quaternion must be finite (got NaN/inf)')
        norm = np.linalg.norm(quat, axis=-1, keepdims=True)  # (N, 1)
        if norm.min() < 1e-6:
            raise PoseError('pose: quaternion has zero norm; expected a unit quaternion xyzw')
        expected = len(self.config.pose.proprio_names)
        values = np.zeros(0) if proprio is None else np.asarray(proprio, dtype=np.float64)
        if values.shape != (expected,) or not np.isfinite(values).all():
            raise PoseError(f'proprio: expected {expected} finite values '
                            f'({self.config.pose.proprio_names}), got shape {values.shape}')

        def tensor(array):
            return torch.as_tensor(array, dtype=torch.float32).unsqueeze(0).to(self.device)

        return tensor(position), tensor(quat / norm), tensor(values)


def _lap(timings: dict, stage: str, start: float, device: torch.device | None) -> float:
    """Record the time since `start` for `stage` (synchronizing CUDA first); return now."""
    if device is not None and device.type == 'cuda':
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    timings[stage] = (now - start) * 1e3
    return now


def _synthetic_frame(height: int, width: int, camera: int) -> ImageFrame:
    pixels = np.random.default_rng(camera).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return ImageFrame(stamp_ns=0, frame_id='warmup', data=pixels.tobytes(), height=height,
                      width=width, encoding='rgb8', step=width * 3, camera=camera)
