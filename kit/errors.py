"""The one base class of expected failures, which entry points end with `error: ...` (cli.run)."""


class KitError(Exception):
    """A failure the user can fix (a bad path, file, setting or download); its message says how.

    Entry points print it as `error: <message>` and exit 1, without a traceback (cli.run);
    anything else is a bug and keeps its traceback.
    """


class ConfigError(KitError, ValueError):
    """Settings that cannot work together, a bad value of a DEEPLAB_* environment variable,
    or a run directory that holds no usable config (kit.config raises most of them)."""
