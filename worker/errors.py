"""The one exception hierarchy of the worker."""


class RfmError(Exception):
    """Base class of every error the worker raises on purpose."""


class ConfigError(RfmError):
    """Invalid configuration: reported as one line at start, exit code 2."""


class ProfileError(ConfigError):
    """A scoring profile file that cannot be used."""


class StateError(RfmError):
    """The Redis state cannot be used as it is (for example it was lost)."""


class UsageError(RfmError):
    """A command asked for something it must refuse (say why): one line, exit code 2."""


class StateLostError(StateError):
    """Redis holds less than it vouched for (writes lost while the worker ran): nothing was
    written on it; the worker replays from what the state still holds."""


class StateTooNewError(StateError):
    """The state in Redis is in a format a later release wrote (worker/rules/state_format.py):
    the worker stops with one line naming the release it needs, writing nothing."""


class DataLossError(StateError):
    """Redis lost state that Kafka's committed offsets count as applied."""


class RedisRefusedError(ConfigError):
    """Redis refuses a command the worker needs (an ACL rule, a renamed or disabled
    command): one line naming it and the grant, exit code 2."""


class UnavailableError(RfmError):
    """A command cannot reach Kafka or Redis: one line naming it and its setting, exit
    code 2."""
