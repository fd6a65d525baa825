"""The splatops trainer: a COLMAP scene in, a viewer-ready 3DGS results.ply out (gsplat).

Never imports kopf or a Kubernetes client; talks to the operator only through
`splatops.contract` (stdout JSON lines, the termination message, exit codes).
"""
