"""Error classes: each names what was wrong and what was expected."""


class VitPerceptionError(Exception):
    """Base class for every error this package raises on purpose."""


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
