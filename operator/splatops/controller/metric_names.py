"""Names of the operator's Prometheus metrics (the chart's dashboard and alerts query these).

The metric objects themselves live in controller/metrics.py; a test checks that every name the
chart uses is one the code exports.
"""

TRAININGS = "splatops_trainings"  # gauge {namespace, phase}: resources by phase
TRAINING_PHASE = "splatops_training_phase"  # gauge {namespace, name, phase}: 1 for the current phase only
STARTED = "splatops_trainings_started_total"  # counter {namespace}
SUCCEEDED = "splatops_trainings_succeeded_total"  # counter {namespace}
FAILED = "splatops_trainings_failed_total"  # counter {namespace, reason}
DURATION = "splatops_training_duration_seconds"  # histogram {outcome}: start to finish
QUEUE_WAIT = "splatops_queue_wait_seconds"  # histogram: creation to Job admitted
RECONCILE_ERRORS = "splatops_reconcile_errors_total"  # counter {handler}
PROGRESS_RATIO = "splatops_training_progress_ratio"  # gauge {namespace, name}: 0..1
STEP = "splatops_training_step"  # gauge {namespace, name}
LAST_PROGRESS = "splatops_training_last_progress_timestamp_seconds"  # gauge {namespace, name}
LOSS = "splatops_training_loss"  # gauge {namespace, name}
PSNR = "splatops_training_psnr_db"  # gauge {namespace, name}
# gauge: 1 while this replica handles trainings, 0 while kopf peering pauses it (a standby) or
# before it starts. Only an active replica exports the per-training series and phase counts above.
OPERATOR_ACTIVE = "splatops_operator_active"
