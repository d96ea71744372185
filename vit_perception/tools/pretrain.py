"""`vit-perception pretrain`: self-supervised pretraining of the backbone on bag camera frames.

    vit-perception pretrain bags/ --out vit_ssl --objective simmim --epochs 20
    vit-perception pretrain bags/ --out vit_ssl --objective beitv2 --teacher TEACHER_DIR
    vit-perception train demos/ --out ckpt --pretrained vit_ssl   # then fine-tune (or freeze)

No actions are needed: frames are every camera image the node would pair with a pose, read and
preprocessed exactly as `train` does (tools/dataset.py). The backbone architecture and the
preprocessing come from the same policy recipe as `train` (`--config`, `--set`), so train with
the same recipe. Objectives (model/pretraining.py):
- `beitv2`: a VQ-KD tokenizer learns discrete codes that reconstruct a frozen teacher's features
  (`--teacher`: an HF model directory, or a `train` checkpoint whose encoder is used), then the
  backbone predicts the codes of masked patches, with BEiT v2's [CLS] aggregation head.
  Codebook usage is reported per tokenizer epoch (small datasets tend to collapse it).
- `simmim`: no teacher; the backbone regresses the pixels of masked patches.
`--out` is a Hugging Face model directory (config.json + model.safetensors +
preprocessor_config.json: the frames' preprocessing) that `train --pretrained` loads, plus
`pretrain_report.json` and `pretrain_state/` (for `--resume`). Every
epoch is saved; masks and shuffling are seeded per epoch and the learning rate is a function of
the step, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

STATE_DIR = 'pretrain_state'
MODULES = 'modules.safetensors'
REPORT = 'pretrain_report.json'
OBJECTIVES = ('beitv2', 'simmim')


@dataclass
class PretrainOptions:
    """Pretraining settings (stored with the state; --resume reuses them)."""

    objective: str = 'simmim'
    teacher: str = ''
    epochs: int = 20  # masked-image-modeling epochs
    tokenizer_epochs: int = 10  # beitv2: VQ-KD tokenizer epochs, before the MIM epochs
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    mask_ratio: float = 0.4
    codebook_size: int = 256
    code_dim: int = 32
    seed: int = 0

    def __post_init__(self):
        from vit_perception.errors import ConfigError

        if self.objective not in OBJECTIVES:
            raise ConfigError(f'--objective {self.objective!r}: expected one of {OBJECTIVES}')
        if self.objective == 'beitv2' and not self.teacher:
            raise ConfigError('--objective beitv2 needs --teacher DIR (an HF model directory '
                              'or a train checkpoint); without a teacher use --objective simmim')
        if self.objective == 'simmim' and self.teacher:
            raise ConfigError('--teacher is only used by --objective beitv2')
        if min(self.epochs, self.batch_size, self.codebook_size, self.code_dim) < 1 \
                or self.tokenizer_epochs < 0:
            raise ConfigError('--epochs, --batch-size, --codebook-size, --code-dim: expected '
                              '>= 1; --tokenizer-epochs >= 0')
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f'--mask-ratio {self.mask_ratio}: expected 0 < ratio < 1')
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f'--lr {self.lr} --weight-decay {self.weight_decay}: expected '
                              'lr > 0 and weight decay >= 0')

    def phases(self) -> list[tuple[str, int]]:
        """[(phase, epochs)] in order."""
        if self.objective == 'beitv2':
            return [('tokenizer', self.tokenizer_epochs), ('mim', self.epochs)]
        return [('mim', self.epochs)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', nargs='*', metavar='BAG',
                        help='bags (rosbag2 directories, .mcap, .db3) or directories of bags; '
                        'no action topic needed')
    parser.add_argument('--out', default=None, help='output HF model directory')
    parser.add_argument('--objective', choices=OBJECTIVES, default=None,
                        help='beitv2 (needs --teacher) or simmim (default)')
    parser.add_argument('--teacher', default=None, metavar='DIR',
                        help='beitv2: the teacher, an HF model directory (safetensors) or a '
                        '`vit-perception train` checkpoint (its encoder)')
    parser.add_argument('--config', default=None,
                        help='policy config JSON: backbone + preprocessing (default: the '
                        'shipped tiny-ViT recipe of `train`)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY=VALUE', help='override a policy config value (repeatable)')
    parser.add_argument('--node-config', default=None,
                        help='node YAML (topics, sync) used to read the frames')
    for name, kind, text in (
            ('epochs', int, 'masked-image-modeling epochs (default 20)'),
            ('tokenizer-epochs', int, 'beitv2: tokenizer epochs before MIM (default 10)'),
            ('batch-size', int, 'default 64'),
            ('lr', float, 'peak learning rate, AdamW, warmup + cosine (default 1e-3)'),
            ('weight-decay', float, 'default 0.05'),
            ('mask-ratio', float, 'fraction of patches masked (default 0.4)'),
            ('codebook-size', int, 'beitv2: number of codes (default 256)'),
            ('code-dim', int, 'beitv2: code dimension (default 32)'),
            ('seed', int, 'seeds init, shuffling and masks (default 0)')):
        parser.add_argument(f'--{name}', type=kind, default=None, help=text)
    parser.add_argument('--resume', action='store_true',
                        help='continue the run saved in --out (its options; --epochs may grow)')


def run(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError

    if not args.bags:
        raise ConfigError('no bags given: expected BAG... (bags or directories of bags)')
    if not args.out:
        raise ConfigError('--out is required: the HF model directory to write')
    report = pretrain_from_args(args)
    print(format_report(report))
    return 0


def pretrain_from_args(args: argparse.Namespace) -> dict:
    from vit_perception.config import load_node_config
    from vit_perception.errors import ConfigError
    from vit_perception.tools import dataset
    from vit_perception.tools.train import build_config, load_trainer_state

    explicit = {f.name: getattr(args, f.name, None) for f in fields(PretrainOptions)}
    explicit = {k: v for k, v in explicit.items() if v is not None}
    out = Path(args.out)
    resume = None
    if args.resume:
        if args.config or args.overrides or args.teacher or args.objective:
            raise ConfigError('--resume continues with the saved recipe: drop --config/--set/'
                              '--teacher/--objective')
        resume = load_trainer_state(out / STATE_DIR)
        options = PretrainOptions(**(resume['pretrain_options'] | explicit))
        config = _policy_config(resume['policy_config'])
    else:
        options = PretrainOptions(**explicit)
        config = build_config(args.config, args.overrides, None, False)
    bags = dataset.find_bags(args.bags)
    frames = dataset.load_frames(bags, config, load_node_config(args.node_config))
    return pretrain(frames, config, options, out, resume=resume)


def _policy_config(data: dict):
    from vit_perception.model.config import PolicyConfig

    return PolicyConfig.from_dict(data)


# ---------------------------------------------------------------------------- the model ---

def build_objective(config, options: PretrainOptions):
    """-> (modules to train and save: nn.ModuleDict, teacher or None). Seeded by the caller."""
    import copy

    from torch import nn

    from vit_perception.model import pretraining
    from vit_perception.model.backbone import build_backbone

    backbone_config = copy.deepcopy(config.backbone)
    student, _ = build_backbone(backbone_config)
    heads = student.hf_model.config.num_attention_heads
    if options.objective == 'simmim':
        return nn.ModuleDict({'simmim': pretraining.SimMIM(student)}), None
    teacher = load_teacher(options.teacher, config.preprocess)
    encoder, _ = build_backbone(copy.deepcopy(backbone_config))  # same architecture, fresh init
    tokenizer = pretraining.VQKDTokenizer(encoder, teacher.dim, options.codebook_size,
                                          options.code_dim, heads)
    mim = pretraining.BeitV2Student(student, options.codebook_size, heads)
    return nn.ModuleDict({'tokenizer': tokenizer, 'mim': mim}), teacher


def load_teacher(path: str, preprocess):
    """A frozen TeacherFeatures from an HF directory or a `train` checkpoint directory."""
    from vit_perception.core.preprocess import preprocess_config_from_hf
    from vit_perception.errors import ConfigError
    from vit_perception.model.backbone import build_backbone
    from vit_perception.model.checkpoint import load_checkpoint
    from vit_perception.model.config import BackboneConfig
    from vit_perception.model.pretraining import TeacherFeatures

    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f'--teacher {path}: not a directory; expected an HF model directory '
                          'or a `vit-perception train` checkpoint')
    if (directory / 'normalization.json').is_file():  # a policy checkpoint: take its encoder
        policy, _ = load_checkpoint(directory)
        backbone, norm = policy.backbone, policy.config.preprocess
    else:
        backbone, processor = build_backbone(BackboneConfig(pretrained=str(directory)))
        norm = preprocess_config_from_hf(processor) if processor else preprocess
    return TeacherFeatures(backbone, (preprocess.mean, preprocess.std), (norm.mean, norm.std))


def student_backbone(modules):
    return modules['mim'].backbone if 'mim' in modules else modules['simmim'].backbone


# ----------------------------------------------------------------------------- training ---

def pretrain(frames, config, options: PretrainOptions, out: Path, *, resume: dict | None = None,
             progress: bool = True) -> dict:
    """Pretrain on (M, 3, H, W) frames; writes `out` every epoch; returns the report."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.utils import logging as hf_logging

    from vit_perception.errors import CheckpointError
    from vit_perception.model.backbone import hf_image_processor
    from vit_perception.model.pretraining import codebook_usage, random_patch_mask
    from vit_perception.tools.train import _deterministic, load_optimizer_state, lr_at

    hf_logging.disable_progress_bar()  # one bar: ours (HF would add one per saved epoch)
    _deterministic()
    torch.manual_seed(options.seed)
    modules, teacher = build_objective(config, options)
    state_dir = out / STATE_DIR
    start_epoch, history = 0, []
    if resume is not None:
        start_epoch, history = int(resume['epoch']), list(resume.get('history', []))
        try:
            modules.load_state_dict(load_file(str(state_dir / MODULES)))
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f'{state_dir / MODULES}: cannot restore the run '
                                  f'({str(err).splitlines()[0]})') from None
    student = student_backbone(modules)
    grid = student.grid(frames)
    schedule = [(name, first, first + count) for name, count, first in _phase_starts(options)]
    total_epochs = schedule[-1][2]
    steps_per_epoch = -(-len(frames) // options.batch_size)
    bar = _bar(total_epochs * steps_per_epoch, start_epoch * steps_per_epoch, progress)
    started = time.perf_counter()
    optimizer, optimizer_phase = None, None
    out.mkdir(parents=True, exist_ok=True)
    # the frames' preprocessing, so `train --pretrained out` (and a teacher) preprocess alike
    hf_image_processor(config.preprocess).save_pretrained(out)
    for epoch in range(start_epoch, total_epochs):
        phase, first, last = next(s for s in schedule if s[1] <= epoch < s[2])
        trained = modules['tokenizer'] if phase == 'tokenizer' else modules[
            'mim' if 'mim' in modules else 'simmim']
        if optimizer_phase != phase:
            params = [p for p in trained.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=options.lr,
                                          weight_decay=options.weight_decay)
            optimizer_phase = phase
            if resume is not None and epoch == start_epoch and resume.get('phase') == phase \
                    and (state_dir / 'optimizer.safetensors').is_file():
                optimizer.load_state_dict(load_optimizer_state(state_dir, optimizer))
        tokenizer = modules['tokenizer'] if 'tokenizer' in modules else None
        if tokenizer is not None:
            tokenizer.train(phase == 'tokenizer')
        trained.train()
        generator = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
        order = torch.randperm(len(frames), generator=generator)
        phase_steps = (last - first) * steps_per_epoch
        sums: dict[str, float] = {}
        for i in range(0, len(order), options.batch_size):
            step = (epoch - first) * steps_per_epoch + i // options.batch_size
            for group in optimizer.param_groups:
                group['lr'] = lr_at(step, phase_steps, options.lr, options.warmup_fraction)
            pixels = frames[order[i:i + options.batch_size]]
            if phase == 'tokenizer':
                loss, stats = tokenizer.loss(pixels, teacher(pixels, grid))
                stats.pop('ids')
            else:
                mask = random_patch_mask(len(pixels), grid, options.mask_ratio, generator)
                if tokenizer is not None:
                    loss, stats = trained.loss(pixels, mask, tokenizer.codes(pixels))
                else:
                    loss, stats = trained.loss(pixels, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats['loss'] = loss.item()
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value * len(pixels)
            bar.update(1)
            bar.set_postfix(phase=phase, loss=f'{loss.item():.4f}')
        record = {'epoch': epoch + 1, 'phase': phase,
                  **{k: v / len(frames) for k, v in sums.items()}}
        if phase == 'tokenizer':
            record.update(codebook_usage(_all_codes(tokenizer, frames, options.batch_size),
                                         options.codebook_size))
        history.append(record)
        bar.write(format_record(record), file=sys.stderr)
        student.hf_model.save_pretrained(out)
        state_dir.mkdir(exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in modules.state_dict().items()},
                  str(state_dir / MODULES))
        _save_state(state_dir, optimizer, {
            'epoch': epoch + 1, 'phase': phase, 'options': {},
            'pretrain_options': asdict(options), 'policy_config': config.to_dict(),
            'history': history})
    bar.close()
    report = {'frames': len(frames), 'grid': list(grid), 'options': asdict(options),
              'history': history, 'seconds': round(time.perf_counter() - started, 1),
              'backbone': student.hf_model.config.model_type}
    (out / REPORT).write_text(json.dumps(report, indent=2) + '\n')
    return report


def _save_state(directory: Path, optimizer, state: dict) -> None:
    from vit_perception.tools.train import save_trainer_state

    save_trainer_state(directory, optimizer, state)


def _phase_starts(options: PretrainOptions):
    first = 0
    for name, count in options.phases():
        yield name, count, first
        first += count


def _all_codes(tokenizer, frames, batch_size: int):
    import torch

    return torch.cat([tokenizer.codes(frames[i:i + batch_size]).flatten()
                      for i in range(0, len(frames), batch_size)])


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc='pretraining', unit='step',
                disable=None if enabled else True, file=sys.stderr, dynamic_ncols=True)


def format_record(record: dict) -> str:
    skip = ('epoch', 'phase')
    values = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                       for k, v in record.items() if k not in skip)
    return f'epoch {record["epoch"]} ({record["phase"]}): {values}'


def format_report(report: dict) -> str:
    lines = [f'pretrained a {report["backbone"]} backbone on {report["frames"]} frames '
             f'({report["options"]["objective"]}) in {report["seconds"]:.0f} s']
    lines += [format_record(r) for r in report['history'][-2:]]
    return '\n'.join(lines)
