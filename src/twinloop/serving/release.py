"""What a request is pinned to while it is served: one release's router, index and adapters.

The persistent, content-addressed release registry records releases; the
:class:`ReleaseLoader` turns one into a :class:`ServingRelease` (adapters resident under
release-scoped names, router built from the release's own configuration).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from twinloop.routing import Router, RouterSpec
from twinloop.serving.types import BASE_ADAPTER


@dataclass(frozen=True)
class ServingRelease:
    """An immutable view of a release for serving."""

    id: str
    router: Router
    index_revision: int | None = None
    """Pinned index revision; None reads the newest (``ServingConfig.follow_index``)."""
    adapters: dict[str, str] = field(default_factory=dict)
    """Domain → resident adapter name (e.g. ``law@rel_ab12``)."""

    def adapter_for(self, domain: str) -> str:
        """The adapter a domain's requests generate with (``__base__`` when it has none)."""
        return self.adapters.get(domain, BASE_ADAPTER)


class ReleaseLoader:
    """Makes registry releases servable: their adapters resident, their router built.

    Adapters are loaded from the artifact store (SHA-256 verified on every load) under
    ``<domain>@<release id>``, so two releases never share a name and a swap or rollback only
    changes which names requests ask for. Routers are cached
    by digest: releases made by training share their parent's router.
    """

    def __init__(self, registry, adapters, embedder, *, follow_index: bool = True) -> None:
        self.registry = registry
        self.adapters = adapters
        self.embedder = embedder
        self.follow_index = follow_index
        self._routers: dict[str, Router] = {}
        self._loaded: dict[str, ServingRelease] = {}
        self._lock = threading.Lock()

    def load(self, rid: str) -> ServingRelease:
        """The servable view of release ``rid``, loading what is not resident yet.

        Raises:
            InvalidInputError: Unknown release.
            IntegrityError: An adapter artifact is missing or fails its SHA-256 check.
        """
        with self._lock:
            if rid in self._loaded:
                return self._loaded[rid]
            rel = self.registry.get(rid)
            names: dict[str, str] = {}
            for domain, digest in sorted(rel.adapters.items()):
                folder = self.registry.artifacts.get("adapter", digest)
                name = f"{domain}@{rid}"
                if name not in self.adapters:
                    self.adapters.load(name, folder)
                names[domain] = name
            router = self._routers.get(rel.router_json)
            if router is None:
                router = Router(RouterSpec.from_json(rel.router_json), self.embedder)
                self._routers[rel.router_json] = router
            # follow_index: serve the newest index revision — facts reach users in seconds,
            # adapters consolidate them later (DESIGN.md "Learning"); else the pinned one.
            view = ServingRelease(id=rid, router=router, index_revision=None if self.follow_index else rel.index_revision,
                                  adapters=names)
            self._loaded[rid] = view
            return view

    def resident(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def unload(self, rid: str, timeout: float | None = None) -> None:
        """Drop a release's adapters once its in-flight requests finish.

        Raises:
            TimeoutError: Requests still hold an adapter after ``timeout``; the release stays loaded.
        """
        with self._lock:
            view = self._loaded.get(rid)
        if view is None:
            return
        for name in view.adapters.values():
            if name in self.adapters:
                self.adapters.unload(name, timeout=timeout)
        with self._lock:
            self._loaded.pop(rid, None)

    def keep_only(self, keep: set[str], timeout: float | None = None) -> list[str]:
        """Unload every loaded release not in ``keep``; returns those unloaded (a release still
        serving a slow request stays, and goes on a later call)."""
        gone = []
        for rid in self.resident():
            if rid in keep:
                continue
            try:
                self.unload(rid, timeout=timeout)
                gone.append(rid)
            except TimeoutError:
                continue
        return gone
