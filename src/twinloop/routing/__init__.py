"""Routing queries to domains (paper §4.1)."""

from twinloop.routing.router import RouteDecision, Router, RouterSpec

__all__ = ["RouteDecision", "Router", "RouterSpec"]
