"""TwinLoop: keep a deployed LLM current without downtime.

Importing the package forbids network access by the Hugging Face libraries before they are
imported anywhere: no code path may download weights at run time (DESIGN.md "Foundation").
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tokenizers' own thread pool fights torch's for 2 cores and warns after fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
