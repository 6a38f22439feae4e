"""One context-manager base for every handle the device holds (camera, interpreter, database,
notify socket): `with` closes it, and `close()` is the subclass's, idempotent."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_T = TypeVar("_T", bound="Closing")


class Closing:
    def close(self) -> None:  # overridden where there is something to release
        pass

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
