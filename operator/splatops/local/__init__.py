"""`splatops local`: embedded API server, operator and a local Job executor."""
