"""Why a transfer-cube policy misses the cube: two measurements (issue 16).

    python -m vit_perception.tools.aloha.diagnose tolerance [--episodes 16]
    python -m vit_perception.tools.aloha.diagnose approach --model CKPT BAG...
    python -m vit_perception.tools.aloha.diagnose closed-loop REPORT_DIR/bags

`tolerance`: the expert planning for the cube moved by r mm (a random direction per episode),
seeds 1000 ..: how well must a policy know where the cube is?

`approach`: on expert bags (teacher forcing: the frames the expert's own motion produced), where
the right gripper will be at the end of the chunk predicted from frame k (forward kinematics of
the predicted right-arm joints) against the expert's, in mm, beside a blind guess (the mean of
the expert's targets over the bags). A policy that reads the cube beats the blind guess from
frame 0 on, where the cube is the only thing that differs between episodes; one that reads the
arm's own motion beats it only once that motion shows where the expert is heading.

`closed-loop`: on the bags of a `demo` run, how far (xy, mm) the right gripper is at the grasp
(control step GRASP_STEP) from where the expert's plan for that episode's cube puts it.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from vit_perception.tools.aloha.scene import AlohaEnv, mujoco

OFFSETS_MM = (0, 5, 10, 15, 20, 30)
FRAMES = (0, 2, 4, 6, 8, 10, 12, 14)
GRASP_STEP = 13  # control step: the expert's gripper is down at the cube (plan step 130)


def expert_tolerance(episodes: int, offsets_mm=OFFSETS_MM, seed: int = 1000) -> dict[int, int]:
    """{offset mm: transfers of `episodes`} for the expert planning for a displaced cube."""
    from vit_perception.tools.aloha.expert import TransferCubeExpert

    rng = np.random.default_rng(0)
    transfers = {}
    with AlohaEnv((48, 64)) as env:
        expert = TransferCubeExpert(env.task, env.control_dt)
        for offset in offsets_mm:
            count = 0
            for episode_seed in range(seed, seed + episodes):
                state = env.reset(episode_seed)
                angle = rng.uniform(0, 2 * np.pi)
                expert.plan(state.cube_position
                            + offset / 1000 * np.array([np.cos(angle), np.sin(angle), 0]))
                while not state.done:
                    state = env.step(expert.target(state.step))
                count += state.success
            transfers[offset] = count
    return transfers


class RightGripperKinematics:
    """The right gripper's world position for 14 joint targets (forward kinematics only)."""

    def __init__(self):
        self.env = AlohaEnv((48, 64))

    def xy(self, targets: np.ndarray) -> np.ndarray:
        env = self.env
        env.data.qpos[env.robot.arm_qpos[6:]] = targets[7:13]
        mujoco.mj_kinematics(env.model, env.data)
        return env.data.xpos[env.robot.gripper_bodies[1], :2].copy()


def approach_errors(checkpoint, bags, frames=FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """(policy, blind) mean right-gripper xy errors (mm) per frame index, over the bags."""
    import torch

    from vit_perception.config import load_node_config
    from vit_perception.core.preprocess import Preprocessor
    from vit_perception.model.checkpoint import load_checkpoint
    from vit_perception.tools.aloha.demo import node_overrides
    from vit_perception.tools.dataset import load_episode

    policy, _ = load_checkpoint(checkpoint)
    config = policy.config
    node_config = load_node_config(None, node_overrides(checkpoint))
    preprocessor = Preprocessor(config.preprocess, torch.device('cpu'), torch.float32)
    kinematics = RightGripperKinematics()
    predicted, expert = [], []  # (bags, frames, 2)
    for bag in bags:
        episode = load_episode(bag, config, node_config, preprocessor)
        with torch.no_grad():
            _, chunk = policy(episode.pixels, episode.position, episode.quat, episode.proprio)
            actions = policy.actions_from_normalized(chunk).numpy()  # (N, H, A)
        last = actions.shape[1] - 1
        predicted.append([kinematics.xy(actions[k, last]) for k in frames])
        expert.append([kinematics.xy(episode.actions[k, last].numpy()) for k in frames])
    predicted, expert = np.array(predicted), np.array(expert)
    blind = expert.mean(axis=0, keepdims=True)  # (1, frames, 2)
    return (np.linalg.norm(predicted - expert, axis=-1).mean(axis=0) * 1000,
            np.linalg.norm(blind - expert, axis=-1).mean(axis=0) * 1000)


def closed_loop_errors(bags) -> list[tuple[str, int, float]]:
    """(bag name, max reward, right gripper xy distance from the plan at GRASP_STEP in mm) for
    each bag of a demo run (its /joint_states at 50 Hz and the /sim/episode start event)."""
    import json

    from rosbags.highlevel import AnyReader

    from vit_perception.drivers import ros_types
    from vit_perception.tools.aloha.expert import TransferCubeExpert
    from vit_perception.tools.aloha.record import AlohaTopics

    topics = AlohaTopics()
    kinematics = RightGripperKinematics()
    expert = TransferCubeExpert(kinematics.env.task, kinematics.env.control_dt)
    rows = []
    for bag in bags:
        states, events = [], []
        with AnyReader([bag], default_typestore=ros_types.typestore()) as reader:
            wanted = [c for c in reader.connections
                      if c.topic in (topics.joint_states, topics.episode)]
            for connection, _, raw in reader.messages(connections=wanted):
                msg = reader.deserialize(raw, connection.msgtype)
                if connection.topic == topics.episode:
                    events.append(json.loads(msg.data))
                else:
                    states.append(np.array(msg.position))
        plan = expert.plan(np.array(events[0]['cube']))
        index = GRASP_STEP * expert.every  # 50 Hz samples (and plan rows) per control step
        error = np.linalg.norm(kinematics.xy(states[index]) - kinematics.xy(plan[index]))
        rows.append((bag.name, events[-1]['max_reward'], float(error) * 1000))
    return rows


def main(argv: list[str] | None = None) -> int:
    from vit_perception.tools.dataset import find_bags

    parser = argparse.ArgumentParser(prog='python -m vit_perception.tools.aloha.diagnose',
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='what', required=True)
    tolerance = sub.add_parser('tolerance', help='expert success vs cube position error')
    tolerance.add_argument('--episodes', type=int, default=16)
    approach = sub.add_parser('approach', help='teacher-forced approach error by frame')
    approach.add_argument('bags', nargs='+', help='expert bags or directories of bags')
    approach.add_argument('--model', action='append', required=True, help='checkpoint (repeat)')
    closed = sub.add_parser('closed-loop', help='right gripper off the plan at the grasp')
    closed.add_argument('bags', nargs='+', help="a demo run's bags (REPORT_DIR/bags)")
    args = parser.parse_args(argv)
    if args.what == 'closed-loop':
        rows = closed_loop_errors(find_bags(args.bags))
        for name, reward, error in rows:
            print(f'{name}: max reward {reward}, {error:.0f} mm off the plan at the grasp')
        errors = np.array([e for _, _, e in rows])
        failed = np.array([e for _, r, e in rows if r < 4])
        print(f'mean {errors.mean():.0f} mm over {len(rows)} episodes'
              + (f'; failures ({len(failed)}): {failed.min():.0f}-{failed.max():.0f} mm'
                 if len(failed) else ''))
        return 0
    if args.what == 'tolerance':
        for offset, count in expert_tolerance(args.episodes).items():
            print(f'cube offset {offset} mm: expert transfers {count}/{args.episodes}')
        return 0
    bags = find_bags(args.bags)
    print('| checkpoint | ' + ' | '.join(f'frame {k}' for k in FRAMES) + ' |')
    print('|---' * (len(FRAMES) + 1) + '|')
    for model in args.model:
        errors, blind = approach_errors(model, bags)
        print(f'| {model} | ' + ' | '.join(f'{e:.0f}' for e in errors) + ' |')
    print('| blind guess | ' + ' | '.join(f'{b:.0f}' for b in blind) + ' |')
    print(f'(right gripper xy error at the end of the chunk predicted from frame k, mm; '
          f'{len(bags)} bags)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
