"""What the engine decides about one object: allow, allow with a patch, or deny."""

from dataclasses import dataclass

from webhook.patch import Operation


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # a short slug, for logs and metrics labels
    patch: tuple[Operation, ...] = ()
    message: str = ""
    warnings: tuple[str, ...] = ()

    @classmethod
    def allow(cls, reason: str, warnings: tuple[str, ...] = ()) -> "Decision":
        return cls(allowed=True, reason=reason, warnings=warnings)

    @classmethod
    def patched(cls, ops: list[Operation], reason: str, warnings: tuple[str, ...] = ()) -> "Decision":
        return cls(allowed=True, reason=reason, patch=tuple(ops), warnings=warnings)

    @classmethod
    def deny(cls, message: str, reason: str) -> "Decision":
        return cls(allowed=False, reason=reason, message=message)

    @property
    def outcome(self) -> str:
        """allowed, patched or denied: the one word logs and metrics group by."""
        if not self.allowed:
            return "denied"
        return "patched" if self.patch else "allowed"
