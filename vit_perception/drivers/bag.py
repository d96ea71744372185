"""Bag driver: ROS 2 bags in and out without ROS, through rosbags.

    BagInput:  rosbag2 directory (metadata.yaml), single .mcap or .db3 file
               -> BagEvents in bag-time (log time) order: the node's input routes
                  (drivers/routes.py: images, every arm's pose, joint states) converted by their
                  converters, extra topics (rosbags messages); undecodable or unconvertible
                  messages become 'bad' events
    BagOutput: rosbags messages -> rosbag2 directory (.mcap or .db3 + metadata.yaml with offered
               QoS profiles), closed (and readable) even when the run stops early

Message definitions come from drivers/ros_types.typestore() (ROS 2 Jazzy + msg/*.msg); a topic
whose type is unknown there, or whose recorded type hash differs, is decoded with the definition
stored in the bag itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vit_perception.config import NodeConfig, PoseInputConfig
from vit_perception.errors import BagError, ConfigError, ImageError, PoseError

STORAGES = {'.mcap': 'mcap', '.db3': 'sqlite3'}
# rosbag2 metadata version written: 8 keeps offered_qos_profiles as the YAML string that Humble
# and Iron store (version 9 changed the QoS serialization); newer rosbag2 reads older versions.
METADATA_VERSION = 8
EVENT_KINDS = ('image', 'pose', 'joints', 'clock', 'extra', 'bad')


@dataclass(frozen=True)
class BagEvent:
    """One message of a bag, converted for the core."""

    kind: str  # an input route's kind ('image' | 'pose' | 'joints') | 'clock' | 'extra' | 'bad'
    log_time_ns: int  # bag receive time (the replay clock)
    topic: str
    value: object  # ImageFrame | PoseSample | JointSample | rosbags msg (extra/clock) |
    #                (reason, detail)


@dataclass(frozen=True)
class _Route:
    kind: str
    msgtype: str
    store: object  # rosbags Typestore used to decode this topic
    route: object = None  # drivers.routes.InputRoute of an input topic (None: extra/clock)


class BagInput:
    """Reads the input topics (the node's route table) and extra topics of a ROS 2 bag (see
    module docstring). `proprio_names`: the checkpoint's pose.proprio_names (joint states are
    read only when given).

    Raises BagError (one line) for a missing or unreadable bag, an empty bag, a missing topic
    (the message lists what the bag has) or a topic of the wrong type.
    """

    def __init__(self, path: str | Path, config: NodeConfig, extra_topics: Sequence[str] = (),
                 *, require_extra: bool = True, proprio_names: Sequence[str] = ()):
        self.path = Path(path)
        self._reader = _open_reader(self.path)
        try:
            self._setup(config, extra_topics, require_extra, proprio_names)
        except BaseException:
            self.close()
            raise

    def _setup(self, config: NodeConfig, extra_topics: Sequence[str], require_extra: bool,
               proprio_names: Sequence[str]):
        import dataclasses

        from vit_perception.drivers import ros_types
        from vit_perception.drivers.routes import input_routes

        reader = self._reader
        infos = reader.topics
        # What the bag has: topic -> msgtype (mixed-type topics listed by their types).
        self.topics: dict[str, str] = {
            name: info.msgtype or '|'.join(sorted({c.msgtype for c in info.connections}))
            for name, info in infos.items()}
        self.counts: dict[str, int] = {name: info.msgcount for name, info in infos.items()}
        if reader.message_count == 0:
            raise BagError(f'{self.path}: the bag holds no messages ({_listing(self.topics)})')
        self._routes: dict[str, _Route] = {}
        # A bag records the poses as topics, whatever pose_input.source the live node uses.
        config = dataclasses.replace(config, pose_input=PoseInputConfig())
        where = {'image': 'topics.cameras', 'pose': 'topics.poses',
                 'joints': 'topics.joint_states'}
        for route in input_routes(config, proprio_names):
            self._check_topic(route.topic, route.msgtype, where[route.kind])
            if not self.counts.get(route.topic):
                raise BagError(f'{self.path}: topic {route.topic} ({where[route.kind]}) has no '
                               'messages')
            self._routes[route.topic] = _Route(route.kind, route.msgtype,
                                               self._store_for(route.topic), route)
        for topic in extra_topics:
            if topic in self._routes:
                continue
            if topic not in self.topics:
                if require_extra:
                    raise BagError(f'{self.path}: topic {topic} not in the bag; the bag has: '
                                   f'{_listing(self.topics)}')
                continue
            kind = 'clock' if self.topics[topic] == ros_types.CLOCK else 'extra'
            self._routes[topic] = _Route(kind, self.topics[topic], self._store_for(topic))
        self.message_count = sum(self.counts.get(t, 0) for t in self._routes)
        self.start_ns = int(reader.start_time)
        self.end_ns = max(int(reader.end_time) - 1, self.start_ns)  # rosbags: end exclusive

    # ------------------------------------------------------------------ reading

    def events(self) -> Iterator[BagEvent]:
        """Every message of the selected topics in log-time order, converted for the core.

        Raises BagError when the storage turns out corrupt part-way (events before it were
        delivered).
        """
        if self._reader is None:
            raise BagError(f'{self.path}: the bag is closed')
        connections = [c for c in self._reader.connections if c.topic in self._routes]
        count = 0
        try:
            for connection, log_time, raw in self._reader.messages(connections):
                count += 1
                yield self._convert(connection.topic, int(log_time), raw)
        except Exception as err:  # rosbags ReaderError, sqlite3/zstd errors, short reads
            raise BagError(f'{self.path}: unreadable after {count} messages, the file is '
                           f'truncated or corrupt ({_reason(err)})') from None

    def _convert(self, topic: str, log_time: int, raw) -> BagEvent:

        route = self._routes[topic]
        try:
            msg = route.store.deserialize_cdr(raw, route.msgtype)
        except Exception as err:  # malformed CDR: rosbags raises several kinds
            return BagEvent('bad', log_time, topic, (
                'bag_deserialize', f'{route.msgtype} at log time {log_time} ns does not '
                f'deserialize ({_reason(err)})'))
        if route.route is None:
            return BagEvent(route.kind, log_time, topic, msg)
        try:
            value = route.route.convert(msg)
        except (ImageError, PoseError, ValueError, TypeError, AttributeError) as err:
            return BagEvent('bad', log_time, topic, (route.route.bad_reason,
                                                     f'at log time {log_time} ns: {err}'))
        return BagEvent(route.kind, log_time, topic, value)

    # ------------------------------------------------------------------ helpers

    def _check_topic(self, topic: str, msgtype: str, where: str) -> None:
        if topic not in self.topics:
            raise BagError(f'{self.path}: topic {topic} ({where}, {msgtype}) not in the bag; '
                           f'the bag has: {_listing(self.topics)}')
        have = self.topics[topic]
        if have != msgtype:
            raise BagError(f'{self.path}: topic {topic} has type {have}, expected {msgtype} '
                           f'({where})')

    def _store_for(self, topic: str):
        """ros_types.typestore() if it knows the topic's type (same hash), else the bag's defs."""
        from rosbags.interfaces import MessageDefinitionFormat
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        from vit_perception.drivers import ros_types

        msgtype = self.topics[topic]
        connection = next(c for c in self._reader.connections if c.topic == topic)
        store = ros_types.typestore()
        if msgtype in store.types:
            if not connection.digest or connection.digest == store.hash_rihs01(msgtype):
                return store
        definition = connection.msgdef
        try:
            if definition.format == MessageDefinitionFormat.MSG:
                types = get_types_from_msg(definition.data, msgtype)
            elif definition.format == MessageDefinitionFormat.IDL:
                types = get_types_from_idl(definition.data)
            else:
                types = None
        except Exception as err:  # rosbags TypesysError and parser errors
            raise BagError(f"{self.path}: topic {topic}: the bag's definition of {msgtype} "
                           f'does not parse ({_reason(err)})') from None
        if not types:
            if msgtype in store.types:  # hash differs but no definition stored: best effort
                return store
            raise BagError(f'{self.path}: topic {topic} has unknown type {msgtype} and the bag '
                           'stores no definition of it; expected a ROS 2 Jazzy type or '
                           'vit_perception/msg/{Embedding,ActionChunk}')
        private = get_typestore(Stores.ROS2_JAZZY)
        private.register(types)
        return private

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except Exception:  # already closed / half-open after a failed open
                pass

    def __enter__(self) -> BagInput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_reader(path: Path):
    """An open rosbags Reader for a rosbag2 directory or a single .mcap / .db3 file."""
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise BagError(f'{path}: bag not found (expected a rosbag2 directory, .mcap or .db3 file)')
    target = path
    if path.is_dir() and not (path / 'metadata.yaml').exists():
        files = sorted(p for p in path.iterdir() if p.suffix in STORAGES)
        if len(files) != 1:
            raise BagError(f'{path}: no metadata.yaml and {len(files)} .mcap/.db3 files; expected '
                           'a rosbag2 directory or one storage file (ros2 bag reindex restores '
                           'metadata.yaml)')
        target = files[0]
    elif path.is_file() and path.suffix not in STORAGES:
        raise BagError(f'{path}: unsupported bag file {path.suffix!r}; expected a rosbag2 '
                       'directory, .mcap or .db3 (ROS 1 .bag: convert with rosbags-convert)')
    try:
        reader = Reader(target)
        reader.open()
    except Exception as err:  # ReaderError, sqlite3 errors, OSError
        raise BagError(f'{path}: cannot open the bag, the file is truncated or corrupt '
                       f'({_reason(err)}); a recording that was killed has no index: repair it '
                       'with `mcap recover` or `ros2 bag reindex`') from None
    return reader


class _KeepOpen:
    """A file proxy whose close() only flushes (rosbags' MCAP close() writes the summary)."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def close(self) -> None:
        self._stream.flush()


def _listing(topics: dict[str, str]) -> str:
    return ', '.join(f'{name}: {msgtype}' for name, msgtype in sorted(topics.items())) or 'nothing'


def _reason(err: BaseException) -> str:
    text = ' '.join(str(err).split())
    return f'{type(err).__name__}: {text}' if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def qos_profile(reliability: str = 'reliable', depth: int = 10):
    """rosbags Qos: keep last `depth`, `reliability` ('reliable'|'best_effort'), volatile."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    kinds = {'reliable': QosReliability.RELIABLE, 'best_effort': QosReliability.BEST_EFFORT}
    if reliability not in kinds or int(depth) < 1:
        raise ConfigError(f'qos {reliability!r} depth {depth}: expected reliable|best_effort and '
                          'depth >= 1')
    zero = QosTime(0, 0)  # 0 = the RMW default (no deadline, no lifespan)
    return Qos(QosHistory.KEEP_LAST, int(depth), kinds[reliability], QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


class BagOutput:
    """A rosbag2 directory being written: `<dir>/<dir>.mcap` (or .db3) + metadata.yaml.

    `path` ending in .mcap / .db3 picks the storage and names the directory without the suffix.
    Use it as a context manager (closes on errors and Ctrl-C too, keeping what was written).

    Durable against kill -9: every `checkpoint_every` messages (and on `checkpoint()`) the
    storage is made readable as it stands: sqlite3 commits its transaction; MCAP closes the
    chunk and writes the summary and footer after it, which the next chunk overwrites. A killed
    writer leaves the directory without metadata.yaml, which BagInput reads (the storage file
    alone), holding every message up to the last checkpoint. Checkpoints depend only on the
    message count, so the output stays byte-reproducible.
    """

    def __init__(self, path: str | Path, storage: str = 'mcap', checkpoint_every: int = 200):
        from rosbags.rosbag2 import StoragePlugin, Writer

        path = Path(path)
        if path.suffix in STORAGES:
            storage, path = STORAGES[path.suffix], path.with_suffix('')
        plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise BagError(f'output storage {storage!r}: expected mcap or sqlite3')
        if path.exists():
            raise BagError(f'{path} exists already; bags are never overwritten: choose a new '
                           'output path')
        self.path = path
        self.storage = storage
        self.message_count = 0
        self.durable_count = 0  # messages that survive a kill -9 (written before a checkpoint)
        self._checkpoint_every = max(int(checkpoint_every), 1)
        self._footer_at: int | None = None  # MCAP: offset of the provisional summary
        self._connections: dict[str, object] = {}
        self._writer = Writer(path, version=METADATA_VERSION, storage_plugin=plugins[storage])
        try:
            self._writer.open()
        except Exception as err:  # WriterError, OSError (permissions, missing parent)
            raise BagError(f'{path}: cannot create the output bag ({_reason(err)})') from None

    @property
    def storage_file(self) -> Path:
        """The .mcap / .db3 file inside the bag directory."""
        return self.path / f'{self.path.name}{".mcap" if self.storage == "mcap" else ".db3"}'

    def add_topic(self, topic: str, msgtype: str, qos=None) -> None:
        """Declare `topic` of `msgtype` with offered QoS (rosbags Qos or (reliability, depth))."""
        from vit_perception.drivers import ros_types

        if qos is None:
            qos = qos_profile()
        elif isinstance(qos, tuple) and len(qos) == 2:
            qos = qos_profile(*qos)
        ros_types.msg_class(msgtype)  # ConfigError for an unknown type
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=ros_types.typestore(), offered_qos_profiles=[qos])

    def write(self, topic: str, log_time_ns: int, msg) -> None:
        """Write a rosbags message (or CDR bytes) on a declared topic at `log_time_ns`."""
        from vit_perception.drivers import ros_types

        connection = self._connections.get(topic)
        if connection is None:
            raise BagError(f'output bag: topic {topic} was not declared with add_topic()')
        if not isinstance(msg, (bytes, bytearray, memoryview)):
            msg = ros_types.typestore().serialize_cdr(msg, connection.msgtype)
        self._writer.write(connection, int(log_time_ns), msg)
        self.message_count += 1
        if self.message_count - self.durable_count >= self._checkpoint_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Make every message written so far survive a kill -9 (see the class docstring)."""
        storage = self._writer.storage if self._writer is not None else None
        if storage is None or self.durable_count == self.message_count:
            return
        if self.storage == 'sqlite3':
            storage.conn.commit()
        else:
            self._truncate_provisional_summary()
            storage.close_chunk()
            self._footer_at = storage.bio.tell()
            bio, storage.bio = storage.bio, _KeepOpen(storage.bio)
            try:  # writes summary + footer, then "closes" (flushes) the file
                storage.close(METADATA_VERSION, '')
            finally:
                storage.bio = bio
        self.durable_count = self.message_count

    def _truncate_provisional_summary(self) -> None:
        if self._footer_at is not None:
            bio = self._writer.storage.bio
            bio.seek(self._footer_at)
            bio.truncate()
            self._footer_at = None

    def close(self) -> None:
        """Write the index and metadata.yaml; safe to call twice."""
        if self._writer is not None and self.storage == 'mcap':
            self._truncate_provisional_summary()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            self.durable_count = self.message_count

    @property
    def closed(self) -> bool:
        return self._writer is None

    def __enter__(self) -> BagOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
