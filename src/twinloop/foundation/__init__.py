"""The frozen base causal LM: loading from its sources, caching, and generation."""

from twinloop.foundation.model import Foundation, Generation, load_foundation

__all__ = ["Foundation", "Generation", "load_foundation"]
