"""Write DDS IDL for ROS 2 types from the rosbags typestore (what rosidl generates for DDS).

Used by test_dds_interop.py to build a C peer on Debian's Cyclone DDS 0.10 with `idlc -t`
(no type information, like rmw_cyclonedds). The typestore stays the one source of definitions.
"""

from __future__ import annotations

from rosbags.interfaces import Nodetype

from vit_perception.drivers import ros_types

_IDL_BASE = {
    'bool': 'boolean', 'byte': 'octet', 'char': 'octet', 'int8': 'int8', 'uint8': 'octet',
    'int16': 'int16', 'uint16': 'uint16', 'int32': 'int32', 'uint32': 'uint32',
    'int64': 'int64', 'uint64': 'uint64', 'float32': 'float', 'float64': 'double',
}


def scoped_name(msgtype: str) -> str:
    """'pkg/msg/T' -> 'pkg::msg::dds_::T_' (the DDS type name ROS 2 uses)."""
    pkg, kind, name = msgtype.split('/')
    return f'{pkg}::{kind}::dds_::{name}_'


def idl_for(msgtypes: list[str]) -> str:
    """IDL text defining `msgtypes` and everything they reference, dependencies first."""
    store = ros_types.typestore()
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for _, desc in store.fielddefs[name][1]:
            nested = _nested(desc)
            if nested:
                visit(nested)
        order.append(name)

    for name in msgtypes:
        visit(name)
    return '\n'.join(_struct(name, store.fielddefs[name][1]) for name in order)


def _nested(desc) -> str | None:
    kind, rest = desc
    if kind == Nodetype.NAME:
        return rest
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        return _nested(rest[0])
    return None


def _type(desc) -> str:
    kind, rest = desc
    if kind == Nodetype.BASE:
        name, bound = rest
        if name == 'string':
            return f'string<{bound}>' if bound else 'string'
        return _IDL_BASE[name]
    if kind == Nodetype.NAME:
        return scoped_name(rest)
    item, count = rest
    assert kind == Nodetype.SEQUENCE
    return f'sequence<{_type(item)}, {count}>' if count else f'sequence<{_type(item)}>'


def _member(name: str, desc) -> str:
    kind, rest = desc
    if kind == Nodetype.ARRAY:
        return f'{_type(rest[0])} {name}[{rest[1]}];'
    return f'{_type(desc)} {name};'


def _struct(msgtype: str, fields) -> str:
    pkg, kind, name = msgtype.split('/')
    members = ' '.join(_member(fname, desc) for fname, desc in fields)
    return (f'module {pkg} {{ module {kind} {{ module dds_ {{ struct {name}_ {{ {members} }}; '
            f'}}; }}; }};')
