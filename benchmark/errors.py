"""Specific exceptions: each says what went wrong and, where there is a choice, what the choices are."""


class BenchmarkError(Exception):
    """Base class for errors the CLI reports without a traceback."""

    def __reduce__(self):
        # Pickled by state, not by calling __init__ with `args` again (subclasses take other arguments),
        # so that an error raised in another process (a Ray worker) arrives whole, message and fields.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls, args, state):
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class ImageRejected(BenchmarkError):
    """An image file that cannot be used; `reason` is short and stored in `rejected_images`."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class UnknownNameError(BenchmarkError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __init__(self, kind: str, name: str, choices):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.choices)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class WeightsMissingError(BenchmarkError):
    """Pretrained weights were asked for but are not on this machine."""


class ResultsDatabaseError(BenchmarkError):
    """The results database cannot be used: corrupt, truncated, not DuckDB, or written by a newer version."""


class DiskFullError(BenchmarkError):
    """No space left on device while storing a run; the run's transaction was rolled back."""
