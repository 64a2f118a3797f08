"""Specific exceptions: each says what went wrong and, where there is a choice, what the choices are."""


class BenchmarkError(Exception):
    """Base class for errors the CLI reports without a traceback."""


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
