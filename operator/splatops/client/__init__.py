"""What users of the cluster run: the CLI, the gateway and `splatops local` share these (below them, above splatops.api and splatops.kubeapi)."""
