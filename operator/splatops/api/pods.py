"""Pure pieces of the pods splatops makes, shared by the operator's Jobs and the clients' short-lived
reader and uploader pods: the labels that tie a pod to its training, and the restricted
securityContext."""

from __future__ import annotations

import hashlib
from typing import Any

from splatops import names

HASH_LEN = 10  # hex digits of sha256: 40 bits


def bounded(value: str, limit: int) -> str:
    """`value` itself when shorter than `limit` characters; else exactly `limit` characters, a
    head of it and a hash of all of it. The lengths never meet, so no name used as is can equal
    a hashed one (a 59-character training literally named like a long one's hashed form got the
    same Job). Dots in the head become '-': it stays a DNS subdomain ('x.-hash' is not)."""
    if len(value) < limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:HASH_LEN]
    return f"{value[: limit - HASH_LEN - 1].replace('.', '-')}-{digest}"


def child_labels(training_name: str, uid: str | None = None) -> dict[str, str]:
    """The operator's own labels for Jobs and pods (never labels copied from the resource).
    The uid label is the one to select a training's pods by (`splatops logs`): a namesake
    created after a deletion has another."""
    labels = {
        names.LABEL_NAME: "splatops",
        names.LABEL_COMPONENT: names.COMPONENT_TRAINER,
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_TRAINING: bounded(training_name, 63),
    }
    if uid:
        labels[names.LABEL_TRAINING_UID] = uid
    return labels


def trainer_selector(uid: str) -> str:
    """Label selector of a training's trainer pods: by its uid, which no other training (a
    namesake, or one whose name hashes alike) shares (`child_labels`)."""
    return f"{names.LABEL_TRAINING_UID}={uid},{names.LABEL_COMPONENT}={names.COMPONENT_TRAINER}"


def restricted_container_security() -> dict[str, Any]:
    """A container securityContext admissible under Pod Security "restricted", with a read-only
    root filesystem (the trainer's and the CLI's download pod's)."""
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
