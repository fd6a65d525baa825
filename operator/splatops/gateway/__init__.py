"""The original REST API (POST /scene/{id}/train_gsplat, ...) on top of resources."""
