"""User-facing error types; the CLI maps them to exit code 2 (bad input or config)."""


class MMAdaptError(Exception):
    """Base class for errors caused by user input: the message names the file, line, sample or key."""


class ConfigError(MMAdaptError, ValueError):
    """A config key is unknown, mistyped or holds an invalid value."""


class DataError(MMAdaptError, ValueError):
    """A data file, line, sample or media file is malformed."""


class NotAModelError(ConfigError, DataError):
    """A directory given as a model is none of the kinds mmadapt reads (one type wherever a model is loaded).

    Both a ConfigError and a DataError: the path comes from a flag or a config key, the files from the user."""
