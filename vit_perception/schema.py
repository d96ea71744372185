"""Strict parsing shared by both configs: the checkpoint's (`model/config.py`) and the node's
(`config.py`).

Dataclasses built from plain dicts (`from_dict`: unknown keys and wrong types are errors, with a
"did you mean"), range checks that name the bad value, dotted names (`a.b` <-> nested dicts), and
size-limited JSON/YAML readers. Every problem is one `ConfigError` line.

Its own module, below both configs, so that the model never imports the node's parameters: the
node config (`config.py`) builds on the model's (camera and arm limits), not the other way round.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

from vit_perception.errors import ConfigError, short_repr

MAX_LIST_LENGTH = 1024  # any list in a config
MAX_CONFIG_FILE_BYTES = 1 << 20
NUMBER = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+')  # 1e9: a str to YAML 1.1


def from_dict(cls: type, data: Any, path: str = ''):
    """Build dataclass `cls` from a plain dict; unknown keys raise ConfigError naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f'{path or "config"}: expected a mapping, got {type(data).__name__}')
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f'{path or "config"}: key {short_repr(key)} is a '
                              f'{type(key).__name__}; keys are names (strings)')
        where = f'{path}.{key}' if path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f' (known: {", ".join(names)})'
            raise ConfigError(f'unknown config key {short_repr(where)}{hint}')
        kwargs[key] = _coerce(hints[key], value, where)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}={short_repr(value)}: expected a list')
        if len(value) > MAX_LIST_LENGTH:
            raise ConfigError(f'{where}: {len(value)} items; at most {MAX_LIST_LENGTH}')
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(item, v, where) for v in value]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{where}={short_repr(value)}: expected a mapping')
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where}={short_repr(value)}: expected true or false')
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{where}={short_repr(value)}: expected an integer')
        return value
    if hint is float:
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e9 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{where}={short_repr(value)}: expected a number')
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f'{where}={short_repr(value)}: expected a finite number')
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f'{where}={short_repr(value)}: expected a string')
        return value
    return value



def require_positive(name: str, value: float, at_most: float | None = None) -> None:
    if not value > 0:
        raise ConfigError(f'{name}={short_repr(value)}: must be > 0')
    if at_most is not None:
        require_at_most(name, value, at_most)


def require_at_most(name: str, value: float, at_most: float) -> None:
    if not value <= at_most:
        raise ConfigError(f'{name}={short_repr(value)}: must be <= {at_most:g}')



def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set data['a']['b'] = value for dotted='a.b', creating nested dicts."""
    keys = dotted.split('.')
    if not all(keys):
        raise ConfigError(f'{short_repr(dotted)}: expected a dotted name like sync.max_future')
    for key in keys[:-1]:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f'cannot set {short_repr(dotted)}: {short_repr(key)} is not a '
                              'group')
    data[keys[-1]] = value



def flatten(data: dict, prefix: str = '') -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (ROS parameter names)."""
    flat = {}
    for key, value in data.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat



def unflatten(data: dict, where: str) -> dict:
    """Accept both nested YAML and dotted keys ('sync.max_pose_skew': 0.1)."""
    out: dict = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f'{where}: key {short_repr(key)} is a {type(key).__name__}; '
                              'parameter names are strings')
        if isinstance(value, dict):
            value = unflatten(value, where)
        if '.' in key:
            set_dotted(out, key, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def load_json(path: str | Path) -> dict:
    """Read a JSON file into a dict with a one-line error on failure."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f'{path}: file not found') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f'{path}: not valid JSON ({err})') from None



def read_config_text(path: Path) -> str:
    """A config file's text (UTF-8, at most MAX_CONFIG_FILE_BYTES); one-line ConfigError else."""
    try:
        if path.is_dir():
            raise ConfigError(f'{path}: is a directory; expected a YAML file')
        if path.stat().st_size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f'{path}: {path.stat().st_size} bytes; a config file is at most '
                              f'{MAX_CONFIG_FILE_BYTES} bytes')
        return path.read_bytes().decode('utf-8')
    except FileNotFoundError:
        raise ConfigError(f'{path}: config file not found') from None
    except UnicodeDecodeError as err:
        raise ConfigError(f'{path}: not UTF-8 text (byte {err.start}); expected a YAML '
                          'file') from None
    except OSError as err:
        raise ConfigError(f'{path}: cannot read it ({err.strerror or err})') from None


def parse_yaml(text: str, where: str):
    """yaml.safe_load, refusing aliases of mappings and lists (alias bombs expand to gigabytes
    when walked) and nesting deeper than 32; one-line ConfigError on any problem."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                node = self.anchors.get(event.anchor)
                if node is not None and not isinstance(node, yaml.ScalarNode):
                    raise ConfigError(f'{where}: line {event.start_mark.line + 1}: alias '
                                      f'*{short_repr(event.anchor)} of a mapping or list; '
                                      'write the values out (aliases of those are refused)')
            self._depth = getattr(self, '_depth', 0) + 1
            try:
                if self._depth > 32:
                    raise ConfigError(f'{where}: nested deeper than 32 levels')
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        mark = getattr(err, 'problem_mark', None)
        line = f' at line {mark.line + 1}' if mark is not None else ''
        raise ConfigError(f'{where}: not valid YAML{line} ({first})') from None
    except RecursionError:
        raise ConfigError(f'{where}: nested too deeply') from None

