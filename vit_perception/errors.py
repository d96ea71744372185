"""Error classes (each names what was wrong and what was expected) and the one-line form of an
error that every entry point prints."""

import reprlib
import sys
import tempfile
import traceback

# Longest error line shown to a user (bytes of UTF-8); longer messages are cut in the middle.
MAX_ERROR_BYTES = 500
MAX_MESSAGE_BYTES = MAX_ERROR_BYTES - 60


class VitPerceptionError(Exception):
    """Base class for every error this package raises on purpose. The message is one line of
    at most MAX_MESSAGE_BYTES, so a prefix like `vit-perception replay: error: ` still fits in
    MAX_ERROR_BYTES, whatever foreign error text it quotes."""

    def __init__(self, message: object = ''):
        super().__init__(one_line(message, MAX_MESSAGE_BYTES))


class ConfigError(VitPerceptionError):
    """A configuration value, key or file is invalid."""


class CheckpointError(VitPerceptionError):
    """A checkpoint directory is missing, unsafe (pickle) or does not match its config."""


class ImageError(VitPerceptionError):
    """An image message cannot be turned into a pixel array (encoding, size, step, bytes)."""


class PoseError(VitPerceptionError):
    """A pose is not finite, has a bad quaternion, or has the wrong shape."""


class SimError(VitPerceptionError):
    """The simulator cannot run: no headless rendering, or no policy answering on its topic."""


class BagError(VitPerceptionError):
    """A ROS 2 bag cannot be read or written (missing, corrupt, missing topics, wrong types)."""


class DatasetError(VitPerceptionError):
    """A LeRobot dataset cannot be read or written (version, missing features, lengths, video)."""


def short_repr(value: object, limit: int = 60) -> str:
    """repr() for error messages, bounded: never builds the full repr of a huge value."""
    short = reprlib.Repr()
    short.maxlevel = 2
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 4
    short.maxstring = short.maxother = limit
    short.maxlong = 40
    return short.repr(value)


def one_line(text: object, limit: int = MAX_ERROR_BYTES) -> str:
    """`text` as one line of at most `limit` UTF-8 bytes (whitespace runs -> one space)."""
    text = str(text)
    if len(text) > 8 * limit:  # do not split a 300 MB message into words
        text = text[:4 * limit] + ' ' + text[-4 * limit:]
    line = ' '.join(text.split())
    data = line.encode('utf-8', 'replace')
    if len(data) <= limit:
        return line
    keep = (limit - 5) // 2
    return (data[:keep].decode('utf-8', 'ignore') + ' ... '
            + data[-keep:].decode('utf-8', 'ignore'))


def report_crash(prog: str, err: BaseException) -> int:
    """An unexpected exception: full traceback to a log file, one line to the user; exit 1."""
    try:
        fd, log = tempfile.mkstemp(prefix='vit-perception-crash-', suffix='.log')
        with open(fd, 'w') as stream:
            stream.write(''.join(traceback.format_exception(err)))
        where = f'traceback in {log}'
    except OSError:
        where = 'the traceback could not be written'
    what = one_line(f'{prog}: internal error (please report it): {type(err).__name__}: {err}',
                    MAX_ERROR_BYTES - len(where.encode()) - 2)
    print(f'{what}; {where}', file=sys.stderr)
    return 1
