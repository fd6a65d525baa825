"""The `splatops` command line (also the kubectl plugin `kubectl-splat`)."""
