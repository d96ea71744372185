"""The process's CPU priority (nice value), set on every thread.

Linux keeps a nice value per thread, and a new thread starts with its creator's: setting every
thread that exists (the inference libraries' pools included) covers the ones made later too.
A lower value than the other processes' gives this one the CPU first when they compete
(README "Priority over other processes"); lowering it needs CAP_SYS_NICE or an RLIMIT_NICE
allowance, raising it never does.
"""

from __future__ import annotations

import os
from pathlib import Path

from vit_perception.config import NICE_RANGE
from vit_perception.errors import ConfigError

TASKS = Path('/proc/self/task')


class NiceNotPermitted(ConfigError):
    """The system does not let this user raise the process's priority."""


def thread_ids() -> list[int]:
    """The kernel ids of this process's threads ([0] = the calling one, where /proc is absent)."""
    if not TASKS.is_dir():
        return [0]
    return [int(name) for name in os.listdir(TASKS)]


def current_nice() -> int:
    """The calling thread's nice value."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def set_nice(nice: int, name: str = 'nice') -> None:
    """Give every thread of this process the nice value `nice` (-20..19).

    Raises ConfigError for a value out of range, NiceNotPermitted (one line with the fix, the
    setting called `name`) when the system does not allow it.
    """
    low, high = NICE_RANGE
    if not low <= nice <= high:
        raise ConfigError(f'{name} {nice}: expected {low}..{high}')
    for tid in thread_ids():
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except PermissionError:
            raise NiceNotPermitted(
                f"{name} {nice}: not permitted to raise this process's priority (now nice "
                f'{current_nice()}): run as a user with a `nice` limit of {nice} or lower in '
                f'/etc/security/limits.conf (e.g. `@realtime - nice {nice}`, then log in '
                'again) or with CAP_SYS_NICE, or leave the nice value at 0') from None
