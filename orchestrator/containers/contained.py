"""Inside a container: run one port command with the native executor and print the measurement
as JSON, so container cells are measured exactly as native ones (see executor.py).

    python -m orchestrator.containers.contained TIMEOUT TREE -- ARGV...
"""
import base64
import dataclasses
import json
import sys

from ..process import execute
from ..ports.discover import tool_env


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m orchestrator.containers.contained TIMEOUT TREE -- ARGV...", file=sys.stderr)
        return 2
    result = execute(argv[3:], env=tool_env(), timeout=float(argv[0]), tree=argv[1] == "1")
    record = dataclasses.asdict(result)
    record["stdout"] = base64.b64encode(result.stdout).decode()
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
