"""Errors a user can cause. The CLI turns each into one red line and a non-zero exit."""


class PerfusionError(Exception):
    """Base class: the message is written for the user, not for a developer."""

    exit_code = 1


class DataError(PerfusionError):
    """Input data is missing, unusable or inconsistent."""


class VocabularyMismatch(DataError):
    """A model's merchant feature ids refer to another vocabulary than the data's."""


class ConfigError(PerfusionError):
    """A recipe or a flag has an unknown key, a wrong type or a bad value."""


class CheckpointError(PerfusionError):
    """A checkpoint or model folder is missing, unsafe or does not match."""


class TrainingError(PerfusionError):
    """Training cannot go on (a non-finite loss, say)."""
