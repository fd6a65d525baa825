"""The kopf operator: thin handlers over pure builders, status mapping and classification."""
