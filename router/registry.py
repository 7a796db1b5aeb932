"""The request routers alive in this process, for the ingress's admin views, admission bounds and the
model call's replica checks (no running replica: 503 at once; a replica whose engine is gone).

Its own module because Serve ships a custom router class to the handle's process pickled *by
value* (RequestRouterConfig registers the class's module with cloudpickle): module-level state in
router/request_router.py would be a private copy per unpickling. This module is imported by
reference, so the router and the ingress see the same set.
"""

from __future__ import annotations

import weakref
from typing import Any

_ROUTERS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def register(router: Any) -> None:
    _ROUTERS.add(router)


def routers() -> list[Any]:
    return list(_ROUTERS)


def find(deployment_name: str) -> Any:
    """This process's router for the named deployment, or None before its first handle call."""
    return next((r for r in _ROUTERS if r.deployment_name == deployment_name), None)
