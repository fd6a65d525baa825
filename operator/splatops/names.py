"""Names users and clusters see. One source of truth for the API group, kind, labels."""

from __future__ import annotations

GROUP = "splatops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GaussianSplatTraining"
PLURAL = "gaussiansplattrainings"
SINGULAR = "gaussiansplattraining"
SHORT_NAMES = ("gst",)
CATEGORIES = ("splatops",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# Labels and annotations the operator puts on its children (Jobs, pods).
LABEL_PREFIX = GROUP
LABEL_TRAINING = f"{GROUP}/training"  # the owning resource's name (hashed above 62 characters)
LABEL_TRAINING_UID = f"{GROUP}/training-uid"  # the owning resource's uid: select pods by this one
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
MANAGED_BY = "splatops-operator"
COMPONENT_TRAINER = "trainer"
# On a Job made again after its predecessor was lost: the trainer pods the earlier Jobs ran.
ANNOTATION_ATTEMPTS_BEFORE = f"{GROUP}/attempts-before"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

TRAINER_CONTAINER = "trainer"
# The non-root user both images create (Dockerfile, trainer_image/Dockerfile) and every pod we
# build runs as: the trainer's files on the volume belong to it, so readers must match.
IMAGE_UID = 10001
SCENE_VOLUME = "scene"
SCENE_MOUNT = "/data"  # the PVC is mounted here in the trainer pod
SHM_VOLUME = "dshm"
SHM_MOUNT = "/dev/shm"
TMP_VOLUME = "tmp"
TMP_MOUNT = "/tmp"
