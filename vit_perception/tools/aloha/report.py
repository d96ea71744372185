"""The report of `vit-perception demo --task aloha-transfer-cube`: rates, a per-episode table,
node latency, and per episode the first and last top-camera frames with both grippers' paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vit_perception.tools.aloha.record import AlohaTopics


def read_episode(bag: Path, topics: AlohaTopics = AlohaTopics()):
    """(first top frame (H, W, 3) uint8, last frame, {pose topic: positions (N, 3)})."""
    from rosbags.rosbag2 import Reader

    from vit_perception.core.images import image_to_array
    from vit_perception.drivers import ros_types

    frames, paths = [], {topic: [] for topic in topics.poses}
    with Reader(bag) as reader:
        wanted = [c for c in reader.connections if c.topic in (topics.image, *topics.poses)]
        for connection, _, raw in reader.messages(wanted):
            msg = ros_types.deserialize(raw, connection.msgtype)
            if connection.topic == topics.image:
                frames.append(np.array(image_to_array(ros_types.image_from_msg(msg)).pixels))
            else:
                paths[connection.topic].append(ros_types.pose_from_msg(msg).position)
    return frames[0], frames[-1], {t: np.array(p).reshape(-1, 3) for t, p in paths.items()}


def project(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """World points (N, 3) -> pixels (u, v) (N, 2) in the top camera (pinhole, MuJoCo fovy)."""
    from vit_perception.tools.aloha.scene import CAMERA, AlohaEnv, mujoco

    height, width = image_size
    with AlohaEnv(image_size) as env:
        cam = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA)
        position = env.data.cam_xpos[cam].copy()
        rotation = env.data.cam_xmat[cam].reshape(3, 3).copy()
        fovy = float(env.model.cam_fovy[cam])
    focal = 0.5 * height / np.tan(np.deg2rad(fovy) / 2)
    local = (np.asarray(points) - position) @ rotation  # (N, 3): x right, y up, -z forward
    depth = -local[:, 2]
    return np.stack([width / 2 + focal * local[:, 0] / depth,
                     height / 2 - focal * local[:, 1] / depth], axis=1)  # (N, 2)


def draw_episode(bag: Path, episode: dict, png: Path) -> None:
    """First frame with both gripper paths and the cube's start, and the last frame."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    first, last, paths = read_episode(bag)
    size = first.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0))
    for ax, image, title in ((axes[0], first, 'start, gripper paths'), (axes[1], last, 'end')):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
        ax.axis('off')
    for (topic, points), color in zip(paths.items(), ('yellow', 'cyan')):
        if len(points):
            uv = project(points, size)
            axes[0].plot(uv[:, 0], uv[:, 1], '-', color=color, lw=1.2,
                         label=topic.strip('/').split('/')[0])
            axes[0].plot(*uv[0], 'o', color=color, ms=3)
    cube = project(np.array(episode['cube'])[None], size)[0]
    axes[0].plot(*cube, 'x', color='white', ms=7, mew=2, label='cube start')
    axes[0].legend(loc='lower left', fontsize=6, framealpha=0.6)
    outcome = ('transfer' if episode['success'] else 'lift' if episode['lift']
               else 'touch' if episode['touch'] else 'no touch')
    fig.suptitle(f'episode {episode["index"]} (seed {episode["seed"]}): {outcome}, max reward '
                 f'{episode["max_reward"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_report(report_dir: Path, checkpoint: Path, args, domain: int, elapsed: float) -> str:
    """report.md + episode_NN.png from sim.json, the bags and node_stats.json; returns the
    one-line summary."""
    import logging

    from vit_perception.tools.aloha.command import rates
    from vit_perception.tools.dataset import progress_bar
    from vit_perception.tools.demo import latency_lines, latency_summary, report_header

    logging.getLogger('OpenGL').setLevel(logging.WARNING)
    sim = json.loads((report_dir / 'sim.json').read_text())
    stats_path = report_dir / 'node_stats.json'
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    episodes = sim['episodes']
    figures = []
    for episode in progress_bar(episodes, True, 'pictures', unit='episode'):
        if episode.get('path') and len(figures) < args.pictures:
            png = report_dir / f'episode_{episode["index"]:02d}.png'
            draw_episode(Path(episode['path']), episode, png)
            figures.append(png.name)
    rate = rates(episodes)
    n = len(episodes)
    count = {key: sum(e[key] for e in episodes) for key in ('success', 'lift', 'touch')}
    lines = report_header('vit-perception demo: ALOHA transfer-cube', checkpoint, n, args,
                          domain, elapsed) + [
        f'**Transfer {count["success"]}/{n} ({rate["success_rate"]:.0%})**, lift '
        f'{count["lift"]}/{n} ({rate["lift_rate"]:.0%}), touch {count["touch"]}/{n} '
        f'({rate["touch_rate"]:.0%}). Rewards as in ACT: 1 touch (right gripper), 2 lift, '
        '3 left gripper touches, 4 transfer (left gripper holds it off the table).', '',
        '| episode | seed | transfer | lift | touch | max reward | cube x, y (m) | missed |',
        '|---|---|---|---|---|---|---|---|']
    for e in episodes:
        yes = {True: 'yes', False: 'no'}
        lines.append(f'| {e["index"]} | {e["seed"]} | {yes[e["success"]]} | {yes[e["lift"]]} | '
                     f'{yes[e["touch"]]} | {e["max_reward"]} | {e["cube"][0]:.3f}, '
                     f'{e["cube"][1]:.3f} | {e.get("missed_actions", 0)} |')
    lines += latency_lines(stats)
    for name in figures:
        lines += [f'![{name}]({name})', '']
    (report_dir / 'report.md').write_text('\n'.join(lines))
    return (f'transfer {count["success"]}/{n} ({rate["success_rate"]:.0%}), lift '
            f'{rate["lift_rate"]:.0%}, touch {rate["touch_rate"]:.0%}; '
            f'{latency_summary(stats, report_dir / "report.md")}')
