"""The HTTP API: native routes, OpenAI-compatible routes, keys, limits, metrics."""

from twinloop.api.app import create_app

__all__ = ["create_app"]
