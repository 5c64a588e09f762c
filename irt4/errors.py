"""Errors meant for people: the CLIs print them as one line and exit with code 2."""


class InputError(Exception):
    """A user-supplied file, option or value is wrong; the message names it."""


class ConfigError(InputError):
    """A configuration file or override is invalid; the message names the key."""
