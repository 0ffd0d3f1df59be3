"""Errors a user can cause. The CLI turns each into one red line and a non-zero exit."""


class PerfusionError(Exception):
    """Base class: the message is written for the user, not for a developer."""


class DataError(PerfusionError):
    """Input data is missing, unusable or inconsistent."""


class ConfigError(PerfusionError):
    """A recipe or a flag has an unknown key, a wrong type or a bad value."""


class CheckpointError(PerfusionError):
    """A checkpoint or model folder is missing, unsafe or does not match."""


class TrainingError(PerfusionError):
    """Training cannot go on (a non-finite loss, say)."""


class NotImplementedYet(PerfusionError):
    """A command that exists with its options but does not work yet."""
