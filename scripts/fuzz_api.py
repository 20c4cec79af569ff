"""Fuzz the HTTP API with schemathesis, once per role, against a real server: any 5xx or any
response that breaks the published OpenAPI schema fails the run.

    python scripts/fuzz_api.py                    # CI size (make fuzz): 150 s per role
    python scripts/fuzz_api.py --max-time 900     # a longer run (clean at 300 s per role, all four)

A fresh data directory with the tiny model and two indexed GDPR passages; uvicorn on a loopback
port (``api.server.ServerThread``); one ``schemathesis run`` per role (admin, operator, reader,
and no key) with a fixed seed and deterministic generation, bounded in time per role (the
fuzzing phase runs until the limit, whatever ``--max-examples`` says), so a failure reproduces. Checks: ``not_a_server_error``,
``status_code_conformance`` (every status the server sends is documented),
``content_type_conformance`` and ``response_schema_conformance``. The API is fuzzed, not
loaded: a token-bucket limit that answers 429 is a documented answer, not a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROLES = {"admin": "fuzz-admin-key-0001", "operator": "fuzz-operator-key-0001", "reader": "fuzz-reader-key-0001"}
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
DOCS = [
    {"text": "The controller shall provide information on action taken on a request to the data subject "
             "without undue delay and in any event within one month of receipt of the request.",
     "code": "GDPR", "article": "12", "part": "3", "jurisdiction": "EU", "edition_date": "2016-04-27",
     "uri": "https://eur-lex.europa.eu/eli/reg/2016/679/oj#art_12-3"},
    {"text": "In the case of a personal data breach, the controller shall without undue delay and, where "
             "feasible, not later than 72 hours after having become aware of it, notify the breach.",
     "code": "GDPR", "article": "33", "part": "1", "jurisdiction": "EU", "edition_date": "2016-04-27",
     "uri": "https://eur-lex.europa.eu/eli/reg/2016/679/oj#art_33-1"},
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-examples", type=int, default=8, help="examples per operation and role")
    ap.add_argument("--max-time", type=int, default=150,
                    help="seconds per role: the fuzzing phase runs until then")
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--roles", default="reader,operator,admin,none")
    args = ap.parse_args(argv)

    import httpx

    from twinloop.api import create_app
    from twinloop.api.server import ServerThread
    from twinloop.kernel.config import load_settings
    from twinloop.runtime import Runtime
    from twinloop.serving.service import Service

    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if schemathesis is None:
        print("fuzz: schemathesis is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="twinloop-fuzz-"))
    settings = load_settings(
        None, data_dir=tmp / "data", foundation={"source": "tiny"},
        serving={"max_new_tokens_limit": 16, "answer_max_new_tokens": 8, "max_wait_ms": 2},
        api={"api_keys": {key: role for role, key in ROLES.items()}, "rate_limit_per_minute": 100_000},
    )
    service = Service(Runtime(settings))
    failed: list[str] = []
    try:
        with ServerThread(create_app(service, settings)) as server:
            r = httpx.post(f"{server.url}/v1/ingest", json={"domain": "law", "documents": DOCS},
                           headers={"Authorization": f"Bearer {ROLES['operator']}"}, timeout=60)
            r.raise_for_status()
            for role in args.roles.split(","):
                cmd = [schemathesis, "run", f"{server.url}/openapi.json", "--checks", CHECKS,
                       "--max-examples", str(args.max_examples), "--max-time", str(args.max_time),
                       "--seed", str(args.seed), "--generation-deterministic", "--workers", "1", "--request-timeout", "60",
                       "--suppress-health-check", "all", "--warnings", "off",
                       # Fault injection makes the server fail on purpose (5xx by design, to
                       # rehearse rollback): fuzzing it would report its own success as a bug.
                       "--exclude-path", "/v1/admin/faults"]
                if role != "none":
                    cmd += ["-H", f"Authorization: Bearer {ROLES[role]}"]
                print(f"== fuzz as {role} ==", flush=True)
                env = dict(os.environ, NO_COLOR="1")
                # cwd: schemathesis writes its .schemathesis/ reports where it runs, not into the tree.
                if subprocess.run(cmd, env=env, cwd=tmp, check=False).returncode != 0:
                    failed.append(role)
    finally:
        service.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        print(f"fuzz: failures as {', '.join(failed)}", file=sys.stderr)
        return 1
    print("fuzz: 0 server errors, 0 schema violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
