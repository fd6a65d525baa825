"""The GaussianSplatTraining API: typed spec/status models and the CRD generated from them."""
