"""Cyclone DDS transport that speaks ROS 2's wire conventions (as rmw_cyclonedds does).

ROS 2 nodes on any RMW see these topics as their own: topic '/a/b' is DDS topic 'rt/a/b', type
'pkg/msg/T' is DDS type 'pkg::msg::dds_::T_', payloads are XCDR1 (plain CDR), QoS is keep-last
with ROS's reliability/durability, and every endpoint advertises `typehash=RIHS01_<hex>;` in its
USER_DATA like ROS 2 Iron and later.

Hot path: payloads never go through cyclonedds-python's own (de)serializer (~28 ms for a 640x480
rgb8 image). Each topic type is an IDL struct generated from the rosbags typestore definition,
so Cyclone registers and checks the real type, but its instances only carry CDR bytes:
`DataWriter.write` calls `sample.serialize()` and `DataReader.take` calls
`data_type.deserialize(bytes)`, which here pass bytes straight through; rosbags does the CDR
work (a numpy view for the pixel array, no copy).

Readers run on one dispatcher thread per transport (a WaitSet), never on Cyclone's receive
threads, so a slow callback cannot stall the network stack. Samples without data (a writer
disposed or left) are dropped and counted; undecodable samples are counted and reported through
`on_error(reason, detail)`; neither ever stops the reader.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from cyclonedds.core import (
    DDSException,
    GuardCondition,
    InstanceState,
    Listener,
    Policy,
    Qos,
    ReadCondition,
    SampleState,
    ViewState,
    WaitSet,
)
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.idl import make_idl_struct
from cyclonedds.idl import types as idl
from cyclonedds.internal import InvalidSample
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration
from rosbags.interfaces import Nodetype

from vit_perception.drivers import ros_graph, ros_types
from vit_perception.drivers.rtps_ports import ephemeral_clash, ephemeral_port_range
from vit_perception.errors import ConfigError

_log = logging.getLogger(__name__)

RELIABILITIES = ('best_effort', 'reliable')
DURABILITIES = ('volatile', 'transient_local')
MAX_DOMAIN_ID = 232  # the highest id the RTPS port mapping allows with default port settings

# on_error reasons
DECODE_ERROR = 'decode_error'  # the sample is not a valid CDR message of the topic's type
CALLBACK_ERROR = 'callback_error'  # the subscriber's callback raised
INCOMPATIBLE_QOS = 'incompatible_qos'  # a peer was found but cannot match (e.g. reliability)
TRANSPORT_ERROR = 'transport_error'  # taking samples failed

ErrorCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class QosSpec:
    """ROS-style QoS: keep-last history of `depth`, reliability, durability."""

    reliability: str = 'reliable'
    depth: int = 10
    durability: str = 'volatile'

    def __post_init__(self):
        if self.reliability not in RELIABILITIES:
            raise ConfigError(f'QoS reliability {self.reliability!r}: expected one of '
                              f'{RELIABILITIES}')
        if self.durability not in DURABILITIES:
            raise ConfigError(f'QoS durability {self.durability!r}: expected one of '
                              f'{DURABILITIES}')
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ConfigError(f'QoS depth {self.depth!r}: expected an integer >= 1')


def qos_profile(reliability: str, depth: int, durability: str = 'volatile') -> QosSpec:
    """A keep-last QoS ('best_effort'|'reliable', depth, 'volatile'|'transient_local')."""
    return QosSpec(reliability=reliability, depth=depth, durability=durability)


# rclpy's qos_profile_sensor_data and the default profile.
SENSOR_DATA = qos_profile('best_effort', 5)
DEFAULT = qos_profile('reliable', 10)


def dds_topic_name(topic: str) -> str:
    """ROS topic name -> DDS topic name: '/a/b' -> 'rt/a/b' (relative names resolve to '/')."""
    name = topic.strip('/')
    if not name or '//' in name or any(c.isspace() for c in name):
        raise ConfigError(f'topic name {topic!r}: expected a ROS name like /camera/image_raw')
    return f'rt/{name}'


def dds_type_name(msgtype: str) -> str:
    """ROS type name -> DDS type name: 'pkg/msg/T' -> 'pkg::msg::dds_::T_'."""
    parts = msgtype.split('/')
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f'message type {msgtype!r}: expected pkg/msg/Type')
    pkg, kind, name = parts
    return f'{pkg}::{kind}::dds_::{name}_'


DISCOVERY_RANGES = ('SUBNET', 'LOCALHOST', 'OFF', 'SYSTEM_DEFAULT')


def ros_discovery_config(env=None, bind_loopback: bool = True) -> str:
    """The Cyclone config fragment rmw_cyclonedds derives from the ROS environment.

    ROS_AUTOMATIC_DISCOVERY_RANGE (Jazzy: SUBNET default, LOCALHOST, OFF, SYSTEM_DEFAULT),
    ROS_STATIC_PEERS (';'-separated addresses) and, when no range is set, ROS_LOCALHOST_ONLY=1
    (Humble: LOCALHOST). Applied before $CYCLONEDDS_URI, which may override any of it;
    LOCALHOST binds to 127.0.0.1 when `bind_loopback` (no $CYCLONEDDS_URI to choose interfaces).
    ConfigError on an unknown range.
    """
    env = os.environ if env is None else env
    text = env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '').strip().upper()
    if not text:
        text = 'LOCALHOST' if env.get('ROS_LOCALHOST_ONLY', '').strip() == '1' else 'SUBNET'
    if text not in DISCOVERY_RANGES:
        raise ConfigError(f'ROS_AUTOMATIC_DISCOVERY_RANGE={text!r}: expected one of '
                          f'{", ".join(DISCOVERY_RANGES)}')
    peers = [p.strip() for p in env.get('ROS_STATIC_PEERS', '').split(';') if p.strip()]
    if text == 'SYSTEM_DEFAULT':
        return ''
    if text == 'OFF':  # nothing discovers this participant (a per-process domain tag)
        return ('<CycloneDDS><Domain><General><AllowMulticast>false</AllowMulticast></General>'
                '<Discovery><ParticipantIndex>none</ParticipantIndex>'
                f'<Tag>ros_discovery_off_{os.getpid()}</Tag></Discovery></Domain></CycloneDDS>')
    if text == 'LOCALHOST':
        peers = ['localhost', *peers]
    # LOCALHOST also binds Cyclone to the loopback interface (as Humble's ROS_LOCALHOST_ONLY in
    # rmw_cyclonedds did): with its default interface it advertises that address and a Fast DDS
    # peer in LOCALHOST mode did not match it here.
    interfaces = ('<Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces>'
                  if bind_loopback else '')
    general = (f'<General>{interfaces}<AllowMulticast>false</AllowMulticast></General>'
               if text == 'LOCALHOST' else '')
    listed = ''.join(f'<Peer address="{escape(p, quote=True)}"/>' for p in peers)
    return (f'<CycloneDDS><Domain>{general}<Discovery><ParticipantIndex>auto</ParticipantIndex>'
            '<MaxAutoParticipantIndex>32</MaxAutoParticipantIndex>'
            f'{"<Peers>" + listed + "</Peers>" if listed else ""}</Discovery></Domain>'
            '</CycloneDDS>')


# Socket receive buffers and large best-effort messages (README "Large best-effort images across
# DDS vendors", `vit-perception bench --live --image-loss`): a 640x480 rgb8 image is ~900 kB of
# UDP datagrams in a burst. The kernel caps receive buffers at net.core.rmem_max (Linux's
# default: 212992 bytes); at that size Cyclone readers lost 39-63 % of such frames here. Cyclone
# asks for 1 MiB by default; with that, readers lost 5-14 of 600 frames in 3 of 7 runs under
# load, with 4 MiB none in 9: the driver asks for 4 MiB and takes what the kernel grants.
RMEM_MAX_PATH = '/proc/sys/net/core/rmem_max'
RECEIVE_BUFFER_BYTES = 4 << 20  # requested per socket (CYCLONEDDS_URI may override)
LARGE_MESSAGE_RECEIVE_BUFFER = 1 << 20  # below this, large best-effort messages get lost


def kernel_receive_buffer_max() -> int | None:
    """net.core.rmem_max (bytes), the kernel's cap on socket receive buffers; None if unknown."""
    try:
        with open(RMEM_MAX_PATH) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def receive_buffer_config(size: int) -> str:
    """A Cyclone config fragment (for CYCLONEDDS_URI) requesting `size`-byte socket receive
    buffers, accepting less: Cyclone's Internal/SocketReceiveBufferSize (0.10: use min=)."""
    return (f'<CycloneDDS><Domain Id="any"><Internal><SocketReceiveBufferSize max="{int(size)}B"/>'
            '</Internal></Domain></CycloneDDS>')


def _warn_small_receive_buffers() -> None:
    """Once per process: say so when the kernel caps receive buffers below what images need."""
    cap = kernel_receive_buffer_max()
    if cap is not None and cap < LARGE_MESSAGE_RECEIVE_BUFFER:
        _log.warning('net.core.rmem_max is %d bytes: best-effort images will be lost (readers '
                     'lost 39-63%% of 640x480 frames at 212992); raise it: sudo sysctl -w '
                     'net.core.rmem_max=4194304', cap)


_domains: dict[int, Domain] = {}  # configured once per process and domain id, kept
_domains_lock = threading.Lock()


def domain_config(uri: str = '', env=None) -> str:
    """The driver's Cyclone configuration: RECEIVE_BUFFER_BYTES receive buffers, then the ROS
    discovery settings of `env` (ros_discovery_config), then `uri` ($CYCLONEDDS_URI), each
    overriding what comes before it."""
    # A CYCLONEDDS_URI chooses its own interfaces (Cyclone refuses one selected twice).
    fragments = [receive_buffer_config(RECEIVE_BUFFER_BYTES),
                 ros_discovery_config(env, bind_loopback=not uri), uri]
    return ','.join(filter(None, fragments))


def _configure_domain(domain_id: int) -> None:
    """Create the Cyclone domain with domain_config() and $CYCLONEDDS_URI (once)."""
    with _domains_lock:
        if domain_id in _domains:
            return
        if not _domains:
            _warn_small_receive_buffers()
        uri = os.environ.get('CYCLONEDDS_URI', '').strip()
        clash = ephemeral_clash(domain_id, ephemeral_port_range())
        if clash:
            _log.warning('%s', clash)
        try:
            _domains[domain_id] = Domain(domain_id, domain_config(uri))
        except DDSException as err:
            hint = clash or ('check CYCLONEDDS_URI and that the network interface exists; '
                             'Cyclone logs the cause on stderr')
            raise ConfigError(f'cannot start DDS domain {domain_id} ({err}): {hint}') from None


def resolve_domain_id(domain_id: int = -1) -> int:
    """-1 -> $ROS_DOMAIN_ID (or 0 when unset); checks 0 <= id <= 232."""
    if domain_id == -1:
        text = os.environ.get('ROS_DOMAIN_ID', '').strip() or '0'
        try:
            domain_id = int(text)
        except ValueError:
            raise ConfigError(f'ROS_DOMAIN_ID={text!r}: expected an integer in '
                              f'0..{MAX_DOMAIN_ID}') from None
    if not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise ConfigError(f'domain_id={domain_id}: expected 0..{MAX_DOMAIN_ID} (or -1 for '
                          f'ROS_DOMAIN_ID)')
    return domain_id


# ------------------------------------------------------------------------------------------
# Topic types: IDL structs generated from the typestore, carrying CDR bytes
# ------------------------------------------------------------------------------------------

_IDL_BASE = {
    'bool': bool, 'byte': idl.byte, 'char': idl.uint8, 'int8': idl.int8, 'uint8': idl.uint8,
    'int16': idl.int16, 'uint16': idl.uint16, 'int32': idl.int32, 'uint32': idl.uint32,
    'int64': idl.int64, 'uint64': idl.uint64, 'float32': idl.float32, 'float64': idl.float64,
}
_cdr_types: dict[tuple[str, int], type] = {}  # (msgtype, id(typestore)) -> class
_cdr_types_lock = threading.Lock()


def _cdr_init(self, cdr: bytes) -> None:
    self.cdr = cdr


def _cdr_serialize(self, buffer=None, endianness=None, use_version_2=None) -> bytes:
    return self.cdr  # already CDR: encapsulation header + XCDR1 payload


def _cdr_deserialize(cls, data: bytes, has_header: bool = True, use_version_2=None):
    return cls(data)


def _cdr_deserialize_key(cls, data: bytes, has_header: bool = True, use_version_2=None):
    return None  # keyless ROS types: nothing to decode


def cdr_type(msgtype: str, store=None) -> type:
    """The IDL struct Cyclone registers for `msgtype` (named like rmw_cyclonedds' type).

    Its fields mirror the definition in `store` (a rosbags typestore; default the project's,
    ros_types.typestore()), so Cyclone validates payloads against the real type, but an
    instance is just `cls(cdr_bytes)`, with `.cdr` holding the serialized message.
    """
    if store is None:
        ros_types.msg_class(msgtype)  # ConfigError for unknown types
        store = ros_types.typestore()
    with _cdr_types_lock:
        return _make_cdr_type(msgtype, store)


def _make_cdr_type(msgtype: str, store) -> type:
    key = (msgtype, id(store))
    if key not in _cdr_types:
        _, fields = store.fielddefs[msgtype]
        annotations = {name: _idl_field(desc, store) for name, desc in fields}
        cls = make_idl_struct(dds_type_name(msgtype).split('::')[-1], dds_type_name(msgtype),
                              annotations, dataclassify=False)
        cls.__init__ = _cdr_init
        cls.serialize = _cdr_serialize
        cls.deserialize = classmethod(_cdr_deserialize)
        cls.deserialize_key = classmethod(_cdr_deserialize_key)
        _cdr_types[key] = cls
    return _cdr_types[key]


def _idl_field(desc, store) -> object:
    kind, rest = desc
    if kind == Nodetype.BASE:
        name, bound = rest
        if name == 'string':
            return idl.bounded_str[bound] if bound else str
        return _IDL_BASE[name]
    if kind == Nodetype.NAME:
        return _make_cdr_type(rest, store)
    item, count = rest
    if kind == Nodetype.ARRAY:
        return idl.array[_idl_field(item, store), count]
    if count:
        return idl.sequence[_idl_field(item, store), count]
    return idl.sequence[_idl_field(item, store)]


def _cyclone_qos(spec: QosSpec, msgtype: str, type_hash: str | None = None) -> Qos:
    reliability = (Policy.Reliability.Reliable(max_blocking_time=duration(milliseconds=100))
                   if spec.reliability == 'reliable' else Policy.Reliability.BestEffort)
    durability = (Policy.Durability.TransientLocal if spec.durability == 'transient_local'
                  else Policy.Durability.Volatile)
    return Qos(
        reliability, durability, Policy.History.KeepLast(spec.depth),
        Policy.DataRepresentation(use_cdrv0_representation=True),  # XCDR1 only, like ROS 2
        Policy.Userdata(f'typehash={type_hash or ros_types.type_hash(msgtype)};'.encode()))


# DDS QosPolicyId_t values named in incompatible-QoS reports.
_POLICY_NAMES = {2: 'durability', 4: 'deadline', 8: 'liveliness', 11: 'reliability',
                 12: 'destination_order', 13: 'history', 25: 'data_representation'}


def _policy_name(policy_id: int) -> str:
    return _POLICY_NAMES.get(policy_id, f'policy {policy_id}')


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def tune_allocator(mmap_threshold: int = 16 << 20) -> bool:
    """Keep buffers up to `mmap_threshold` bytes on the heap (glibc): returns False elsewhere.

    Every received image is a fresh ~1 MB buffer in Cyclone and in Python. glibc serves such
    sizes with mmap/munmap and pays page faults on every message (measured here: take of a
    640x480 rgb8 image 0.9 ms -> 0.05 ms once tuned). Same as MALLOC_MMAP_THRESHOLD_=16777216
    MALLOC_TRIM_THRESHOLD_=67108864 in the environment. Process-wide; call once at startup.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library('c')
    if not name or 'libc.so' not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
                    and libc.mallopt(_M_TRIM_THRESHOLD, 4 * int(mmap_threshold)))
    except (OSError, AttributeError):
        return False


def _delete(entity) -> None:
    """Delete a Cyclone entity now (the binding's own finalizer; calling it twice is a no-op)."""
    if entity is not None:
        entity.__del__()


# ------------------------------------------------------------------------------------------
# Publishers and subscriptions
# ------------------------------------------------------------------------------------------

class DdsPublisher:
    """One DataWriter. `publish(msg)` takes a rosbags message, `publish_cdr` CDR bytes."""

    def __init__(self, participant, topic: Topic, ros_topic: str, msgtype: str, qos: QosSpec,
                 on_error: ErrorCallback):
        self.topic = ros_topic
        self.msgtype = msgtype
        self.qos = qos
        self.published = 0
        self._type = cdr_type(msgtype)

        def incompatible(_writer, status):
            on_error(INCOMPATIBLE_QOS, f'{ros_topic}: a subscriber cannot match this '
                     f'{qos.reliability} publisher ({_policy_name(status.last_policy_id)})')

        self._listener = Listener(on_offered_incompatible_qos=incompatible)
        self._writer = DataWriter(participant, topic, qos=_cyclone_qos(qos, msgtype),
                                  listener=self._listener)

    @property
    def guid(self) -> bytes:
        """The writer's DDS GUID (16 bytes): its rmw gid."""
        return self._writer.guid.bytes

    def publish(self, msg: object) -> None:
        """Serialize a message of this publisher's type (rosbags) and send it."""
        self.publish_cdr(ros_types.serialize(msg, self.msgtype))

    def publish_cdr(self, cdr: bytes | bytearray | memoryview) -> None:
        """Send an already serialized message (CDR encapsulation header included)."""
        self._writer.write(self._type(cdr if type(cdr) is bytes else bytes(cdr)))
        self.published += 1

    def matched(self) -> int:
        """Number of subscriptions currently matched (any vendor, any process)."""
        return len(self._writer.get_matched_subscriptions())

    def wait_for_subscribers(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least `count` subscriptions matched; False on timeout."""
        return _wait_until(lambda: self.matched() >= count, timeout)

    def close(self) -> None:
        """Delete the writer (matched readers see it leave)."""
        _delete(self._writer)


class DdsSubscription:
    """One DataReader, drained by its transport's dispatcher thread."""

    def __init__(self, participant, topic: Topic, ros_topic: str, msgtype: str, qos: QosSpec,
                 callback: Callable[[object], None], on_error: ErrorCallback, raw: bool):
        self.topic = ros_topic
        self.msgtype = msgtype
        self.qos = qos
        self.received = 0  # messages handed to the callback
        self.invalid = 0  # samples without data (dispose / unregister), dropped
        self.errors = 0  # undecodable samples and callback exceptions
        self._callback = callback
        self._on_error = on_error
        self._raw = raw
        self._closed = False

        def incompatible(_reader, status):
            on_error(INCOMPATIBLE_QOS, f'{ros_topic}: a publisher cannot match this '
                     f'{qos.reliability} subscription ({_policy_name(status.last_policy_id)})')

        self._listener = Listener(on_requested_incompatible_qos=incompatible)
        self._reader = DataReader(participant, topic, qos=_cyclone_qos(qos, msgtype),
                                  listener=self._listener)
        self.condition = ReadCondition(
            self._reader, SampleState.Any | ViewState.Any | InstanceState.Any)

    @property
    def guid(self) -> bytes:
        """The reader's DDS GUID (16 bytes): its rmw gid."""
        return self._reader.guid.bytes

    def matched(self) -> int:
        """Number of publishers currently matched (any vendor, any process)."""
        return len(self._reader.get_matched_publications())

    def wait_for_publishers(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least `count` publishers matched; False on timeout."""
        return _wait_until(lambda: self.matched() >= count, timeout)

    def drain(self) -> int:
        """Take every available sample and dispatch it; returns the number dispatched."""
        done = 0
        while not self._closed:
            try:
                samples = self._reader.take(N=max(self.qos.depth, 16))
            except DDSException as err:
                if not self._closed:
                    self._report(TRANSPORT_ERROR, f'{self.topic}: take failed: {err}')
                return done
            if not samples:
                return done
            for sample in samples:
                if isinstance(sample, InvalidSample):
                    self.invalid += 1
                    continue
                done += self._dispatch(sample.cdr)
        return done

    def _dispatch(self, cdr: bytes) -> int:
        if self._raw:
            msg = memoryview(cdr)
        else:
            try:
                msg = ros_types.deserialize(cdr, self.msgtype)
            except Exception as err:  # rosbags SerdeError and friends: never stop the reader
                self.errors += 1
                self._report(DECODE_ERROR, f'{self.topic}: cannot decode {self.msgtype} '
                             f'({len(cdr)} bytes): {err}')
                return 0
        self.received += 1
        try:
            self._callback(msg)
        except Exception as err:
            self.errors += 1
            self._report(CALLBACK_ERROR, f'{self.topic}: callback raised '
                         f'{type(err).__name__}: {err}')
        return 1

    def _report(self, reason: str, detail: str) -> None:
        try:
            self._on_error(reason, detail)
        except Exception:  # an error handler must not kill the dispatcher either
            _log.exception('on_error handler failed for %s', detail)

    def close(self) -> None:
        """Delete the reader; no callback runs for it afterwards."""
        self._closed = True
        _delete(self.condition)
        _delete(self._reader)


class DdsTransport:
    """One DDS participant on `domain_id` with ROS 2 named topics, publishers, subscriptions.

    Thread-safe: publishers may be used from any thread; subscription callbacks run on one
    dispatcher thread owned by the transport. `ros_distro` ('humble', 'jazzy', ...; None:
    $ROS_DISTRO) selects the ros_discovery_info layout of announce_node (ros_graph.gid_size).
    """

    def __init__(self, domain_id: int = -1, on_error: ErrorCallback | None = None,
                 ros_distro: str | None = None):
        self.domain_id = resolve_domain_id(domain_id)
        self.gid_size = ros_graph.gid_size(ros_distro)
        self.on_error = on_error or _log_error
        _configure_domain(self.domain_id)
        self._participant = DomainParticipant(self.domain_id)
        self._node: tuple[str, str] | None = None  # (namespace, name) once announced
        self._discovery_writer = None
        self._lock = threading.Lock()
        self._topics: dict[str, tuple[Topic, str]] = {}
        self._publishers: list[DdsPublisher] = []
        self._subscriptions: list[DdsSubscription] = []
        self._waitset = WaitSet(self._participant)
        self._wake = GuardCondition(self._participant)
        self._waitset.attach(self._wake)
        self._thread: threading.Thread | None = None
        self._dispatch_stopped = False
        self._closed = False

    def publisher(self, topic: str, msgtype: str, qos: QosSpec = DEFAULT) -> DdsPublisher:
        """A writer on ROS topic `topic` of ROS type `msgtype` ('pkg/msg/Type')."""
        with self._lock:
            self._check_open()
            pub = DdsPublisher(self._participant, self._topic(topic, msgtype), topic, msgtype,
                               qos, self.on_error)
            self._publishers.append(pub)
            self._announce()
        return pub

    def subscribe(self, topic: str, msgtype: str, qos: QosSpec,
                  callback: Callable[[object], None], on_error: ErrorCallback | None = None,
                  raw: bool = False) -> DdsSubscription:
        """Call `callback(msg)` for each message on `topic`, from the dispatcher thread.

        `msg` is a rosbags message object (arrays are numpy views on the received buffer);
        with raw=True it is the CDR bytes (memoryview) instead. Undecodable samples and
        callback exceptions go to `on_error(reason, detail)` (default: the transport's).
        """
        with self._lock:
            self._check_open(subscribing=True)
            sub = DdsSubscription(self._participant, self._topic(topic, msgtype), topic,
                                  msgtype, qos, callback, on_error or self.on_error, raw)
            self._subscriptions.append(sub)
            self._announce()
            self._waitset.attach(sub.condition)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name='dds-dispatch',
                                                daemon=True)
                self._thread.start()
        self._wake.set(True)
        return sub

    def announce_node(self, name: str, namespace: str = '/') -> None:
        """Appear in the ROS graph as node `namespace/name` (`ros2 node list`), owning this
        transport's publishers and subscriptions, as rmw does: a ParticipantEntitiesInfo on
        ros_discovery_info (reliable, transient local, depth 1), re-sent when endpoints change.
        """
        with self._lock:
            self._check_open()
            if self._discovery_writer is None:
                msgtype, store = ros_graph.PARTICIPANT_ENTITIES_INFO, ros_graph.typestore(
                    self.gid_size)
                qos = _cyclone_qos(qos_profile('reliable', 1, 'transient_local'), msgtype,
                                   store.hash_rihs01(msgtype))
                topic = self._topic(ros_graph.DISCOVERY_TOPIC, msgtype,
                                    dds_name=ros_graph.DISCOVERY_TOPIC, store=store)
                self._discovery_writer = DataWriter(self._participant, topic, qos=qos)
            self._node = (namespace, name)
            self._announce()

    def _announce(self) -> None:
        """Publish the node's entities (under self._lock; no-op before announce_node)."""
        if self._node is None or self._closed:
            return
        cdr = ros_graph.participant_entities_info_cdr(
            self._participant.guid.bytes, *self._node, [s.guid for s in self._subscriptions],
            [p.guid for p in self._publishers], self.gid_size)
        self._discovery_writer.write(cdr_type(ros_graph.PARTICIPANT_ENTITIES_INFO,
                                              ros_graph.typestore(self.gid_size))(cdr))

    def close_subscriptions(self) -> None:
        """Stop the dispatcher and delete every reader; publishers keep working."""
        with self._lock:
            if self._dispatch_stopped:
                return
            self._dispatch_stopped = True
            subs = list(self._subscriptions)
        self._wake.set(True)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for sub in subs:
            self._waitset.detach(sub.condition)
            sub.close()

    def close(self) -> None:
        """Stop the dispatcher and delete every entity (idempotent)."""
        self.close_subscriptions()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for pub in self._publishers:
            pub.close()
        _delete(self._discovery_writer)
        _delete(self._waitset)
        _delete(self._wake)
        for topic, _ in self._topics.values():
            _delete(topic)
        _delete(self._participant)

    def __enter__(self) -> DdsTransport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self, subscribing: bool = False) -> None:
        if self._closed or (subscribing and self._dispatch_stopped):
            raise ConfigError('DDS transport is closed: create a new DdsTransport')

    def _topic(self, topic: str, msgtype: str, dds_name: str | None = None,
               store=None) -> Topic:
        name = dds_name or dds_topic_name(topic)
        if name in self._topics:
            entity, have = self._topics[name]
            if have != msgtype:
                raise ConfigError(f'topic {topic} is already used with type {have}, not '
                                  f'{msgtype}: expected one type per topic')
            return entity
        if store is None:
            ros_types.prepare(msgtype)
        entity = Topic(self._participant, name, cdr_type(msgtype, store))
        self._topics[name] = (entity, msgtype)
        return entity

    def _run(self) -> None:
        while not self._dispatch_stopped:
            try:
                self._waitset.wait(duration(seconds=1))
                self._wake.take()
            except DDSException as err:
                if not self._dispatch_stopped:
                    _log.warning('DDS wait failed: %s', err)
                    time.sleep(0.01)
                continue
            with self._lock:
                subs = list(self._subscriptions)
            for sub in subs:
                if self._dispatch_stopped:
                    break
                sub.drain()


def _log_error(reason: str, detail: str) -> None:
    _log.warning('%s: %s', reason, detail)


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
