"""Errors meant for people: the CLI prints their message and exits with status 2, no traceback."""


class UserError(Exception):
    """A mistake the user can fix (a config, a path, a missing data file)."""


class ConfigError(UserError):
    """A config file, key, value or override is invalid."""


class DataError(UserError):
    """A data set cannot be loaded (missing files, no spatial shape, ...)."""
