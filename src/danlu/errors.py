"""User-facing errors. The CLI prints these without a traceback and exits with status 2.

Raise a subclass with a message that says what was wrong and what to do about it; use `assert` only
for internal invariants that no input can break.
"""


class DanluError(Exception):
    """Base class of every error caused by the user's input, config or files."""


class ConfigError(DanluError):
    """A recipe or override is malformed: unknown key, wrong type, value out of range."""


class DataError(DanluError):
    """A corpus, document file or token shard is missing, empty, unreadable or corrupt."""


class TokenizerError(DanluError):
    """A tokenizer cannot be trained, loaded or used with the given data or settings."""


class CheckpointError(DanluError):
    """A checkpoint is missing, corrupt, truncated or belongs to a different config."""


class OutputExistsError(DanluError):
    """The output path holds something that danlu must not replace (a file, someone else's files)."""


class RunBusy(DanluError):
    """Another danlu process holds the run dir's lock (two runs would race over the same outputs)."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint's files are missing, truncated or fail their checksums (not merely another run's)."""


class MissingExtra(DanluError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def check(ok: bool, key: str, msg: str) -> None:
    """Raise ConfigError("key: msg") unless ok: the one-line range checks of every config dataclass."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


class EngineFull(DanluError):
    """The inference engine's request queue is full; try again later (the server answers 429)."""
