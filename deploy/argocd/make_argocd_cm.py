"""Regenerate argocd-cm.yaml from health.lua (run after editing the Lua; a test keeps them equal).

    python deploy/argocd/make_argocd_cm.py
"""

from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).resolve().parent
KEY = "resource.customizations.health.splatops.dev_GaussianSplatTraining"


def render(lua: str) -> str:
    body = "".join(f"    {line}\n" if line else "\n" for line in lua.rstrip("\n").split("\n"))
    return (
        "# Generated from health.lua by make_argocd_cm.py: do not edit by hand.\n"
        "# Merge into the argocd-cm ConfigMap (namespace argocd), e.g.\n"
        "#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file argocd-cm.yaml\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: argocd-cm\n"
        "  namespace: argocd\n"
        "  labels:\n"
        "    app.kubernetes.io/name: argocd-cm\n"
        "    app.kubernetes.io/part-of: argocd\n"
        "data:\n"
        f"  {KEY}: |\n"
        f"{body}"
    )


def main() -> None:
    lua = (HERE / "health.lua").read_text()
    target = HERE / "argocd-cm.yaml"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(render(lua))
    tmp.replace(target)


if __name__ == "__main__":
    main()
