"""User-facing error types; the CLI maps them to exit code 2 (bad input or config)."""


class MMAdaptError(Exception):
    """Base class for errors caused by user input: the message names the file, line, sample or key."""


class ConfigError(MMAdaptError, ValueError):
    """A config key is unknown, mistyped or holds an invalid value."""


class DataError(MMAdaptError, ValueError):
    """A data file, line, sample or media file is malformed."""
