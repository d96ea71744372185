"""`vit-perception train`: behavior cloning of action chunks from recorded ROS 2 bags.

    vit-perception train bags/ --out ckpt                 # the shipped recipe (tiny ViT)
    vit-perception train bags/ --out ckpt --resume ckpt --epochs 80
    vit-perception train --regenerate-default             # demos + training -> shipped checkpoint

Inputs are built exactly as the node builds them (tools/dataset.py). The loss is L1 (or MSE) on
normalized (H, A) chunks, masked past the end of the recording. Every epoch writes a complete
checkpoint (config.json + model.safetensors + normalization.json) plus `trainer_state.json`
(epoch, options, history) and `optimizer.safetensors` (AdamW moments); `--save-every N` writes it
every N epochs instead (the last epoch always). `--resume` continues exactly from the last
checkpoint written: shuffling and augmentation are seeded per epoch and the learning rate is
a function of the step, so a resumed run equals an uninterrupted one. Never pickles.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

TRAINER_STATE = 'trainer_state.json'
OPTIMIZER_STATE = 'optimizer.safetensors'

# The shipped recipe: a tiny early-fusion ViT trained from scratch on the scene camera. The sim
# renders 96 px; a 64 px center crop keeps the table at full resolution (~1 cm per pixel).
DEFAULT_POLICY = {
    'backbone': {'hidden_size': 64, 'num_layers': 3, 'num_heads': 4, 'mlp_ratio': 2,
                 'patch_size': 8, 'image_size': 64},
    'pose': {'num_tokens': 1},
    'fusion': {'mode': 'early', 'late_heads': 4, 'late_layers': 1},
    'actions': {'horizon': 8, 'dt': 0.1, 'kind': 'velocity'},  # the sim commands m/s
    'embedding': {'dim': 32},
    'preprocess': {'size': [96, 96], 'crop_size': [64, 64]},
    'cameras': ['camera'],
    'model_id': 'vit_perception_reach_tiny',
}


@dataclass
class TrainOptions:
    """Optimization settings (stored in trainer_state.json; --resume reuses them)."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05
    seed: int = 0
    val_fraction: float = 0.1
    augment_shift: int = 4
    ablate_images: bool = False
    loss: str = 'l1'
    save_every: int = 1  # epochs between checkpoints; the last epoch is always written

    def __post_init__(self):
        from vit_perception.errors import ConfigError

        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f'--epochs {self.epochs} --batch-size {self.batch_size}: expected '
                              'both >= 1')
        if (not 0 < self.lr <= 10 or not 0 <= self.weight_decay <= 10
                or not 0 <= self.warmup_fraction < 1):
            raise ConfigError(f'--lr {self.lr} --weight-decay {self.weight_decay}: expected '
                              'lr in (0, 10] and weight decay in [0, 10]')
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f'--val-fraction {self.val_fraction}: expected 0 <= f < 1')
        if self.augment_shift < 0:
            raise ConfigError(f'--augment-shift {self.augment_shift}: expected >= 0 pixels')
        if self.save_every < 1:
            raise ConfigError(f'--save-every {self.save_every}: expected >= 1 epochs (the last '
                              'epoch is always saved)')
        if self.loss not in ('l1', 'mse'):
            raise ConfigError(f'--loss {self.loss!r}: expected l1 or mse')


# ----------------------------------------------------------------------------------- CLI ---

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', nargs='*', metavar='BAG',
                        help='bags (rosbag2 directories, .mcap, .db3), directories of bags, or '
                        'LeRobotDataset v3.0 directories')
    parser.add_argument('--lerobot-map', default=None, metavar='FILE',
                        help='LeRobot datasets: YAML naming the camera, pose and action '
                        'features (default: observation.images.<camera>, observation.state '
                        'x y z qx qy qz qw, action)')
    parser.add_argument('--out', default=None, help='output checkpoint directory (a new one, '
                        'or --overwrite, or the --resume directory)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the checkpoint already in --out')
    parser.add_argument('--config', default=None,
                        help='policy config JSON (PolicyConfig layout; default: the shipped '
                        'tiny-ViT recipe)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY=VALUE', help='override a policy config value, e.g. '
                        '--set backbone.num_layers=4 (repeatable; VALUE is JSON or a string)')
    parser.add_argument('--node-config', default=None,
                        help='node YAML (topics, sync) used to build observations, as the node '
                        'does (default: the node defaults)')
    parser.add_argument('--action-topic', default='/expert/action',
                        help='ActionChunk topic holding the demonstrated actions')
    parser.add_argument('--epochs', type=int, default=None, help='total epochs (default 40)')
    parser.add_argument('--batch-size', type=int, default=None, help='default 64')
    parser.add_argument('--lr', type=float, default=None,
                        help='peak learning rate (AdamW, warmup + cosine; default 1e-3)')
    parser.add_argument('--weight-decay', type=float, default=None, help='default 0.01')
    parser.add_argument('--seed', type=int, default=None,
                        help='seeds init, split, shuffling, augmentation (default 0)')
    parser.add_argument('--val-fraction', type=float, default=None,
                        help='fraction of EPISODES held out for validation (default 0.1)')
    parser.add_argument('--augment-shift', type=int, default=None,
                        help='random image shift in pixels during training (default 4)')
    parser.add_argument('--loss', choices=['l1', 'mse'], default=None, help='default l1')
    parser.add_argument('--save-every', type=int, default=None, metavar='N',
                        help='write the checkpoint every N epochs (default 1; the last epoch '
                        'always; --resume continues from the last one written)')
    parser.add_argument('--ablate-images', action='store_true',
                        help='zero every image (training and evaluation): a pose-only baseline')
    parser.add_argument('--freeze-backbone', action='store_true',
                        help='train only pose tokens, fusion and heads')
    parser.add_argument('--pretrained', default=None, metavar='DIR_OR_HUB_ID',
                        help='start the backbone from a Hugging Face ViT-family model '
                        '(local directory with safetensors, or a hub id)')
    parser.add_argument('--resume', default=None, metavar='CKPT',
                        help='continue a training from its checkpoint directory')
    parser.add_argument('--no-optimizer-state', action='store_true',
                        help='do not write optimizer.safetensors (smaller; no exact --resume)')
    parser.add_argument('--regenerate-default', action='store_true',
                        help='record the expert demos with fixed seeds and train the shipped '
                        'checkpoint (vit_perception/data/default_checkpoint unless --out)')
    parser.add_argument('--work-dir', default=None,
                        help='--regenerate-default: where to record the demos (default: a '
                        'temporary directory)')


def run(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError

    if args.regenerate_default:
        return regenerate_default(args)
    if not args.bags:
        raise ConfigError('no bags given: expected BAG... (bags or directories of bags)')
    if not args.out:
        raise ConfigError('--out is required: the checkpoint directory to write')
    check_output(args)  # before anything is loaded or trained
    summary = train_from_args(args)
    print(format_summary(summary))
    return 0


def check_output(args: argparse.Namespace) -> None:
    """CheckpointError when --out is a file or holds a checkpoint (unless --overwrite, or it is
    the --resume directory, which training continues in place)."""
    from vit_perception.model.checkpoint import check_output_directory

    out = Path(args.out)
    same = bool(args.resume) and out.resolve() == Path(args.resume).resolve()
    check_output_directory(out, overwrite=args.overwrite or same)


def train_from_args(args: argparse.Namespace) -> dict:
    """Resolve config + options from the CLI, load the bags, train; returns the summary."""
    import torch

    from vit_perception.config import load_node_config
    from vit_perception.errors import ConfigError
    from vit_perception.model.checkpoint import load_checkpoint
    from vit_perception.model.policy import build_policy
    from vit_perception.tools import lerobot

    bags = lerobot.find_inputs(args.bags)  # bags and LeRobot dataset directories
    explicit = {f.name: getattr(args, f.name, None) for f in fields(TrainOptions)}
    explicit['ablate_images'] = args.ablate_images or None
    explicit = {k: v for k, v in explicit.items() if v is not None}
    resume = None
    if args.resume:
        if args.config or args.overrides or args.pretrained or args.freeze_backbone:
            raise ConfigError("--resume continues with the checkpoint's own config: drop "
                              '--config/--set/--pretrained/--freeze-backbone')
        resume = load_trainer_state(args.resume)
        options = TrainOptions(**(resume['options'] | explicit))
        policy, _ = load_checkpoint(args.resume)
        config = policy.config
    else:
        options = TrainOptions(**explicit)
        config = build_config(args.config, args.overrides, args.pretrained,
                              args.freeze_backbone)
        torch.manual_seed(options.seed)
        policy = build_policy(config)  # fills preprocess from a pretrained processor
    node_config = load_node_config(args.node_config)
    episodes = lerobot.load_inputs(bags, config, node_config, args.action_topic,
                                   lerobot.load_mapping(args.lerobot_map))
    names = episodes[0].action_names
    if list(config.actions.names) != names:
        if resume is not None:
            raise ConfigError(f"the bags' action names {names} differ from the checkpoint's "
                              f'{list(config.actions.names)}')
        config.actions.names = names
        torch.manual_seed(options.seed)
        policy = build_policy(config)  # rebuilt: the head size follows the action space
    return train(policy, episodes, options, Path(args.out), resume=resume,
                 optimizer_state=not args.no_optimizer_state, resume_dir=args.resume,
                 action_topic=args.action_topic)


def build_config(path: str | None, overrides: list[str], pretrained: str | None,
                 freeze: bool):
    """PolicyConfig: DEFAULT_POLICY or a JSON file, then --set overrides, then flags."""
    import copy

    from vit_perception.errors import ConfigError
    from vit_perception.model.config import PolicyConfig
    from vit_perception.schema import load_json, set_dotted

    data = copy.deepcopy(DEFAULT_POLICY) if path is None else load_json(path)
    data.pop('training', None)  # a checkpoint's config.json works as a recipe too
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'--set {item!r}: expected key=value, e.g. --set '
                              'backbone.num_layers=4')
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        set_dotted(data, key.strip(), value)
    if pretrained:
        set_dotted(data, 'backbone.pretrained', pretrained)
        set_dotted(data, 'backbone.hf_config', {})
    if freeze:
        set_dotted(data, 'backbone.freeze', True)
    config = PolicyConfig.from_dict(data)
    if config.backbone.freeze and not (config.backbone.pretrained or config.backbone.hf_config):
        raise ConfigError('--freeze-backbone with a randomly initialized backbone: expected '
                          '--pretrained DIR_OR_HUB_ID as well')
    return config


# ------------------------------------------------------------------------------ training ---

def train(policy, episodes, options: TrainOptions, out: Path, *, resume: dict | None = None,
          optimizer_state: bool = True, resume_dir: str | None = None,
          action_topic: str = '/expert/action', progress: bool = True) -> dict:
    """Train `policy` on `episodes`; writes `out` every `options.save_every` epochs and after
    the last; returns the summary dict."""
    import torch

    from vit_perception.model.checkpoint import save_checkpoint
    from vit_perception.tools import dataset

    _deterministic()
    if options.ablate_images:
        policy.config.ablate_images = True  # the model zeroes its images, here and when it runs
    data = _concat(episodes)
    train_eps, val_eps = dataset.split_episodes(len(episodes), options.val_fraction,
                                                options.seed)
    train_idx = _indices(data['episode'], train_eps)
    val_idx = _indices(data['episode'], val_eps)
    if resume is None:
        policy.set_normalization(dataset.normalization_stats([episodes[i] for i in train_eps]))
    stats = policy.normalization()
    if policy.config.backbone.freeze:
        for param in policy.backbone.parameters():
            param.requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    # foreach: the same updates bit for bit as the per-tensor loop on CPU (tested), fewer calls
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay,
                                  foreach=True)
    start_epoch, history = 0, []
    if resume is not None:
        start_epoch, history = int(resume['epoch']), list(resume.get('history', []))
        if resume_dir and (Path(resume_dir) / OPTIMIZER_STATE).is_file():
            optimizer.load_state_dict(load_optimizer_state(Path(resume_dir), optimizer))
    steps_per_epoch = -(-len(train_idx) // options.batch_size)
    total_steps = options.epochs * steps_per_epoch
    action_mean = torch.tensor(stats['action_mean'])
    action_std = torch.tensor(stats['action_std'])
    targets = (data['actions'] - action_mean) / action_std  # (N, H, A) normalized

    bar = _bar(total_steps, start_epoch * steps_per_epoch, progress)
    started = time.perf_counter()
    for epoch in range(start_epoch, options.epochs):
        generator = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        policy.train()
        total = 0.0
        for i in range(0, len(order), options.batch_size):
            step = epoch * steps_per_epoch + i // options.batch_size
            for group in optimizer.param_groups:
                group['lr'] = lr_at(step, total_steps, options.lr, options.warmup_fraction)
            batch = order[i:i + options.batch_size]
            pixels = data['pixels'][batch]
            if options.augment_shift:
                pixels = random_shift(pixels, options.augment_shift, generator)
            _, chunk = policy(pixels, data['position'][batch], data['quat'][batch],
                              data['proprio'][batch])
            loss = masked_loss(chunk, targets[batch], data['mask'][batch], options.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f'{loss.item():.4f}')
        record = {'epoch': epoch + 1, 'train_loss': total / max(len(order), 1)}
        if len(val_idx):
            record['val_loss'] = evaluate(policy, data, targets, val_idx, options)['loss']
        history.append(record)
        bar.write(f'epoch {epoch + 1}/{options.epochs}: train {record["train_loss"]:.4f}'
                  + (f', val {record["val_loss"]:.4f}' if 'val_loss' in record else ''),
                  file=sys.stderr)
        last = epoch + 1 == options.epochs
        if not last and (epoch + 1) % options.save_every:
            continue
        summary = _summary(policy, data, targets, train_idx, val_idx, episodes, train_eps,
                           val_eps, options, history, action_mean, time.perf_counter() - started,
                           action_topic, final=last)
        save_checkpoint(policy, out, extra=summary, overwrite=True)  # checked by check_output
        save_trainer_state(out, optimizer if optimizer_state else None, {
            'epoch': epoch + 1, 'options': asdict(options), 'history': history,
            'train_episodes': [episodes[i].name for i in train_eps],
            'val_episodes': [episodes[i].name for i in val_eps]})
    bar.close()
    if start_epoch >= options.epochs:  # nothing left to do: report the checkpoint as it is
        summary = _summary(policy, data, targets, train_idx, val_idx, episodes, train_eps,
                           val_eps, options, history, action_mean, 0.0, action_topic,
                           final=True)
    policy.eval()
    return summary


def lr_at(step: int, total_steps: int, peak: float, warmup_fraction: float) -> float:
    """Linear warmup to `peak`, then cosine decay to 0 (a pure function of the step)."""
    import math

    warmup = max(1, int(warmup_fraction * total_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def masked_loss(pred, target, mask, kind: str = 'l1'):
    """Mean |pred - target| (or squared) over unmasked (B, H) steps and all A dimensions."""
    diff = pred - target  # (B, H, A)
    diff = diff.abs() if kind == 'l1' else diff.square()
    weight = mask.unsqueeze(-1).to(diff.dtype)  # (B, H, 1)
    return (diff * weight).sum() / (weight.sum() * diff.shape[-1]).clamp_min(1.0)


def random_shift(pixels, pad: int, generator):
    """DrQ-style augmentation: shift each (C, 3, H, W) sample by up to +-pad pixels
    (edge-replicated), the same shift for all cameras of a sample."""
    import torch
    import torch.nn.functional as F

    batch, cams, _, height, width = pixels.shape
    padded = F.pad(pixels.flatten(1, 2), (pad, pad, pad, pad), mode='replicate')  # (B, C*3, ..)
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).tolist()
    # one window slice per sample: a plain copy, ~8x faster than one gather with index tensors
    shifted = torch.stack([padded[b, :, y:y + height, x:x + width]
                           for b, (y, x) in enumerate(zip(dy, dx))])  # (B, C*3, H, W)
    return shifted.unflatten(1, (cams, 3))  # (B, C, 3, H, W)


def evaluate(policy, data: dict, targets, indices, options: TrainOptions,
             batch_size: int = 256) -> dict:
    """Loss on normalized chunks and per-dimension MAE in robot units over `indices`."""
    import torch

    policy.eval()
    loss_sum = weight_sum = 0.0
    abs_sum = torch.zeros(targets.shape[-1], dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for i in range(0, len(indices), batch_size):
            batch = indices[i:i + batch_size]
            _, chunk = policy(data['pixels'][batch], data['position'][batch],
                              data['quat'][batch], data['proprio'][batch])
            mask = data['mask'][batch]
            weight = float(mask.sum()) * targets.shape[-1]
            loss_sum += float(masked_loss(chunk, targets[batch], mask, options.loss)) * weight
            weight_sum += weight
            actions = policy.actions_from_normalized(chunk)  # (B, H, A) robot units
            abs_sum += (actions - data['actions'][batch]).abs()[mask].double().sum(0)
            count += int(mask.sum())
    policy.train()
    return {'loss': loss_sum / max(weight_sum, 1.0),
            'mae': (abs_sum / max(count, 1)).tolist()}


def baseline_mae(data: dict, indices, action_mean) -> list[float]:
    """Per-dimension MAE of always predicting the training action mean."""
    mask = data['mask'][indices]
    errors = (data['actions'][indices] - action_mean).abs()[mask]  # (M, A)
    return errors.double().mean(0).tolist() if len(errors) else [0.0] * len(action_mean)


def _summary(policy, data, targets, train_idx, val_idx, episodes, train_eps, val_eps,
             options, history, action_mean, seconds, action_topic, final: bool) -> dict:
    summary = {
        'action_topic': action_topic, 'episodes': len(episodes),
        'train_episodes': len(train_eps), 'val_episodes': len(val_eps),
        'train_samples': len(train_idx), 'val_samples': len(val_idx),
        'options': asdict(options), 'epochs_done': history[-1]['epoch'] if history else 0,
        'train_loss': history[-1]['train_loss'] if history else None,
        'action_names': list(policy.config.actions.names),
        'ablate_images': options.ablate_images, 'train_seconds': round(seconds, 1),
    }
    if final and len(val_idx):
        result = evaluate(policy, data, targets, val_idx, options)
        summary.update(val_loss=result['loss'], val_mae=result['mae'],
                       val_baseline_mae=baseline_mae(data, val_idx, action_mean))
    return summary


def format_summary(summary: dict) -> str:
    """A short human summary: losses and per-dimension validation MAE vs the baseline."""
    lines = [f'trained {summary["epochs_done"]} epochs on {summary["train_samples"]} samples '
             f'({summary["train_episodes"]} episodes), validated on {summary["val_samples"]} '
             f'({summary["val_episodes"]} episodes) in {summary["train_seconds"]:.0f} s',
             f'train loss {summary["train_loss"]:.4f}'
             + (f', val loss {summary["val_loss"]:.4f}' if 'val_loss' in summary else '')]
    if 'val_mae' in summary:
        lines.append(f'{"dim":>8} {"val MAE":>10} {"mean-baseline":>14}')
        for name, mae, base in zip(summary['action_names'], summary['val_mae'],
                                   summary['val_baseline_mae']):
            lines.append(f'{name:>8} {mae:10.4f} {base:14.4f}')
    return '\n'.join(lines)


def _concat(episodes) -> dict:
    import torch

    data = {key: torch.cat([getattr(e, key) for e in episodes])
            for key in ('pixels', 'position', 'quat', 'proprio', 'actions', 'mask')}
    data['episode'] = torch.cat([torch.full((len(e),), i) for i, e in enumerate(episodes)])
    return data


def _indices(episode_of_sample, chosen):
    import torch

    return torch.nonzero(torch.isin(episode_of_sample, torch.tensor(chosen, dtype=torch.long))
                         )[:, 0]


def _deterministic() -> None:
    import torch

    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except RuntimeError:  # pragma: no cover - torch builds without the switch
        pass


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: a bar on a terminal, none in logs (the per-epoch lines are printed anyway)
    return tqdm(total=total, initial=initial, desc='training', unit='step',
                disable=None if enabled else True, file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------- trainer state files ---

def save_trainer_state(directory: Path, optimizer, state: dict) -> None:
    """trainer_state.json (+ optimizer.safetensors: AdamW tensors flattened by name), each
    written to a temporary file and renamed into place."""
    from safetensors.torch import save_file

    from vit_perception.model.checkpoint import atomic_file, write_text_atomic

    directory = Path(directory)
    state = dict(state)
    if optimizer is not None:
        opt = optimizer.state_dict()
        tensors = {f'state.{index}.{key}': value.detach().cpu().contiguous()
                   for index, entry in opt['state'].items() for key, value in entry.items()}
        state['param_groups'] = opt['param_groups']
        with atomic_file(directory / OPTIMIZER_STATE) as tmp:
            save_file(tensors, str(tmp))
    else:
        (directory / OPTIMIZER_STATE).unlink(missing_ok=True)
    write_text_atomic(directory / TRAINER_STATE, json.dumps(state, indent=2) + '\n')


def load_trainer_state(directory: str | Path) -> dict:
    """trainer_state.json of a checkpoint directory (CheckpointError if absent/invalid)."""
    from vit_perception.errors import CheckpointError

    path = Path(directory) / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f'{path} is missing: --resume needs a checkpoint written by '
                              '`vit-perception train`') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f'{path}: not valid JSON ({err})') from None
    if not isinstance(state, dict) or not isinstance(state.get('epoch'), int) \
            or not isinstance(state.get('options'), dict):
        raise CheckpointError(f'{path}: expected an object with an integer epoch and options')
    known = {f.name for f in fields(TrainOptions)}
    state['options'] = {k: v for k, v in state['options'].items() if k in known}
    return state


def load_optimizer_state(directory: Path, optimizer) -> dict:
    """Rebuild an optimizer state_dict from optimizer.safetensors + trainer_state.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vit_perception.errors import CheckpointError

    path = directory / OPTIMIZER_STATE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f'{path}: not a valid safetensors file ({err})') from None
    groups = load_trainer_state(directory).get('param_groups')
    expected = optimizer.state_dict()['param_groups']
    if not isinstance(groups, list) or [g.get('params') for g in groups] != [
            g['params'] for g in expected]:
        raise CheckpointError(f'{path}: optimizer parameter groups do not match the model')
    state: dict = {}
    for name, tensor in tensors.items():
        _, index, key = name.split('.', 2)
        state.setdefault(int(index), {})[key] = tensor
    return {'state': state, 'param_groups': groups}


# --------------------------------------------------------------- the shipped checkpoint ---

# Demonstrations for the shipped checkpoint: seeds 0 .. DEMO_EPISODES - 1 (held-out evaluation
# uses seeds >= 1000).
DEMO_EPISODES = 200
DEMO_SEED = 0
DEMO_ACTION_NOISE = 0.05


def regenerate_default(args: argparse.Namespace) -> int:
    """Record the expert demos (fixed seeds) and train the shipped checkpoint (fixed seed)."""
    import tempfile

    from vit_perception.core.engine import DEFAULT_CHECKPOINT
    from vit_perception.errors import ConfigError
    from vit_perception.tools.sim.record import record_episodes

    if args.bags or args.resume or args.config or args.overrides or args.pretrained:
        raise ConfigError('--regenerate-default uses the fixed recipe: drop BAG/--resume/'
                          '--config/--set/--pretrained')
    out = Path(args.out) if args.out else DEFAULT_CHECKPOINT
    if args.out:  # the shipped checkpoint is this command's to replace; any other is not
        check_output(args)
    with tempfile.TemporaryDirectory(prefix='vit_perception_demos_') as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        bags = work / 'demos'
        if not bags.exists():
            print(f'recording {DEMO_EPISODES} expert episodes (seeds {DEMO_SEED}..'
                  f'{DEMO_SEED + DEMO_EPISODES - 1}) into {bags}', file=sys.stderr)
            record_episodes(bags, DEMO_EPISODES, DEMO_SEED, image_size=96,
                            action_noise=DEMO_ACTION_NOISE)
        train_args = argparse.Namespace(**vars(args))
        train_args.bags = [str(bags)]
        train_args.out = str(out)
        train_args.no_optimizer_state = True
        train_args.regenerate_default = False
        summary = train_from_args(train_args)
    (out / TRAINER_STATE).unlink(missing_ok=True)
    print(format_summary(summary))
    print(f'wrote {out}')
    return 0
