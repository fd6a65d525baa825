"""Real Helm (helm-sdkpy, Helm's Go library) for the chart tests; runs under .venv-helm (Python 3.12+).

helm-sdkpy has no `template` action, so `render` runs a real `helm install` (wait=False) against
the in-memory Kubernetes emulator the test suite starts, with the release stored in memory
(HELM_DRIVER=memory), and prints the release's rendered manifest and its hooks' manifests. `lint` prints Helm's lint result.

    python helm_tool.py render KUBECONFIG CHART VALUES_JSON NAMESPACE RELEASE
    python helm_tool.py lint CHART
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


def main(argv: list[str]) -> int:
    os.environ.setdefault("HELM_DRIVER", "memory")
    import helm_sdkpy  # imported late: HELM_DRIVER must be set first

    action = argv[0]
    if action == "render":
        kubeconfig, chart, values_json, namespace, release = argv[1:6]
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
        values = json.loads(values_json)
        result = asyncio.run(
            helm_sdkpy.Install(config).run(
                release, chart, values=values or None, wait=False, timeout=60, take_ownership=True
            )
        )
        # Hooks in Helm's order (weight, then name), without their run times (last_run).
        hooks = sorted(result.get("hooks") or [], key=lambda h: (int(h.get("weight") or 0), h.get("name", "")))
        json.dump(
            {
                "manifest": result.get("manifest", ""),
                "hooks": [{"path": h.get("path", ""), "manifest": h.get("manifest", "")} for h in hooks],
                "notes": result.get("info", {}).get("notes", ""),
            },
            sys.stdout,
        )
        return 0
    if action == "lint":
        config = helm_sdkpy.Configuration(namespace="default")
        json.dump(asyncio.run(helm_sdkpy.Lint(config).run(argv[1])), sys.stdout)
        return 0
    print(f"unknown action {action!r}; use render or lint", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
