"""What a request is pinned to while it is served: one release's router, index and adapters.

The persistent, content-addressed release registry (issue 6) produces these; until then the
service builds the ``base`` release: no adapters, the default router, and the newest index
revision (``ServingConfig.follow_index``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twinloop.routing import Router
from twinloop.serving.types import BASE_ADAPTER


@dataclass(frozen=True)
class ServingRelease:
    """An immutable view of a release for serving."""

    id: str
    router: Router
    index_revision: int | None = None
    """Pinned index revision; None reads the newest (until gated releases, issue 6)."""
    adapters: dict[str, str] = field(default_factory=dict)
    """Domain → resident adapter name (e.g. ``law@rel_ab12``)."""

    def adapter_for(self, domain: str) -> str:
        """The adapter a domain's requests generate with (``__base__`` when it has none)."""
        return self.adapters.get(domain, BASE_ADAPTER)
