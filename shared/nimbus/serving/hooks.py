"""The governance hook of every registry model: an alias move is announced to the ``predict`` processes.

Registered on import for every model (``governance.EVERY_MODEL``); the composition roots that move
aliases (the CLI, the models app, the predict app) import this module. The announcement is a hint:
a process that misses it (Redis away) still sees the move on its next poll of the registry, so a
failed announcement is logged, never a failed promotion.
"""

from __future__ import annotations

import logging

from nimbus import governance
from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.stores.redis.live import LiveModelStore

log = logging.getLogger("nimbus.serving")


class AnnounceOnMove:
    def check(self, settings: Settings, name: str, version: str) -> None:
        """Any version may take an alias; one the predict function cannot serve is refused at load (409)."""

    def moved(self, settings: Settings, name: str, alias: str, version: str) -> None:
        try:
            LiveModelStore.for_settings(settings).announce_alias(name, alias, version)
        except StoreUnavailable as exc:
            log.warning("%s@%s -> v%s not announced (predict processes see it on their next poll): %s",
                        name, alias, version, exc)


HOOK = AnnounceOnMove()
governance.register_hook(governance.EVERY_MODEL, HOOK)
