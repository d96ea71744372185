"""engine.nice: every thread of the process at one nice value; not permitted = one warning."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from vit_perception.config import NodeConfig
from vit_perception.core import priority, runtimes
from vit_perception.core.engine import Engine
from vit_perception.errors import ConfigError
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy

# A raised nice value (a lower priority) is allowed to any user, so these tests need no privilege;
# they run in a child process, whose priority is its own.
RAISED = min(priority.current_nice() + 3, 19)

THREADS_BEFORE_AND_AFTER = textwrap.dedent("""
    import json, os, sys, threading
    from vit_perception.core import priority
    started, stop = threading.Event(), threading.Event()
    old = threading.Thread(target=lambda: (started.set(), stop.wait()))
    old.start()
    started.wait()
    priority.set_nice(int(sys.argv[1]))
    new = threading.Thread(target=stop.wait)
    new.start()
    print(json.dumps([os.getpriority(os.PRIO_PROCESS, tid) for tid in priority.thread_ids()]))
    stop.set()
""")

ENGINE_THREADS = textwrap.dedent("""
    import json, os, sys
    import torch
    from vit_perception.core import priority
    from vit_perception.core.engine import Engine
    from vit_perception.model.config import tiny_config
    from vit_perception.model.policy import build_policy
    torch.manual_seed(0)
    engine = Engine(build_policy(tiny_config()).eval(), device='cpu', dtype='fp32',
                    warmup_iters=1, backend=sys.argv[2], cache_dir=sys.argv[3],
                    nice=int(sys.argv[1]))
    print(json.dumps([os.getpriority(os.PRIO_PROCESS, tid) for tid in priority.thread_ids()]))
""")


def run_child(script: str, *args) -> list[int]:
    done = subprocess.run([sys.executable, '-c', script, *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_thread_gets_the_value_those_before_and_after():
    nices = run_child(THREADS_BEFORE_AND_AFTER, RAISED)
    assert nices == [RAISED] * 3  # main, the thread started before, the one started after


def test_an_engine_with_nice_runs_every_thread_at_it(tmp_path):
    backend = 'onnxruntime' if 'onnxruntime' in runtimes.installed_runtimes() else 'torch'
    nices = run_child(ENGINE_THREADS, RAISED, backend, tmp_path)
    assert len(nices) >= 2 and set(nices) == {RAISED}  # the libraries' pools included


@pytest.mark.parametrize('bad', [-21, 20])
def test_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=f'nice {bad}: expected -20..19'):
        priority.set_nice(bad)
    with pytest.raises(ConfigError, match=f'engine.nice={bad}: expected -20..19'):
        NodeConfig.from_dict({'engine': {'nice': bad}})


def test_config_default_leaves_the_priority_alone():
    assert NodeConfig().engine.nice == 0
    assert NodeConfig.from_dict({'engine': {'nice': -5}}).engine.nice == -5


def refuse(which, tid, value):
    raise PermissionError(1, 'Operation not permitted')


def test_not_permitted_is_one_line_with_the_fix(monkeypatch):
    monkeypatch.setattr(os, 'setpriority', refuse)
    with pytest.raises(priority.NiceNotPermitted) as error:
        priority.set_nice(-5, 'engine.nice')
    message = str(error.value)
    assert message.startswith('engine.nice -5: not permitted')
    assert 'limits.conf' in message and 'CAP_SYS_NICE' in message and '\n' not in message


def tiny_engine(**kwargs) -> Engine:
    return Engine(build_policy(tiny_config()).eval(), device='cpu', dtype='fp32',
                  warmup_iters=0, **kwargs)


def test_engine_not_permitted_warns_and_keeps_running(monkeypatch, caplog):
    monkeypatch.setattr(os, 'setpriority', refuse)
    with caplog.at_level(logging.WARNING, logger='vit_perception.core.engine'):
        engine = tiny_engine(nice=-5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith('engine.nice -5: not permitted')
    assert engine.backend == 'torch'


def test_engine_passes_the_config_value_and_leaves_0_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(priority, 'set_nice', lambda nice, name: calls.append((nice, name)))
    monkeypatch.setattr(Engine, 'from_checkpoint',
                        classmethod(lambda cls, path, **kw: tiny_engine(**{
                            k: v for k, v in kw.items() if k in ('nice', 'threads')})))
    Engine.from_config(NodeConfig.from_dict({'engine': {'nice': -7}}).engine)
    Engine.from_config(NodeConfig().engine)
    assert calls == [(-7, 'engine.nice')]
