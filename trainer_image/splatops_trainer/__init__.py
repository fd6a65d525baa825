"""The splatops trainer: a COLMAP scene in, a viewer-ready 3DGS results.ply out (gsplat).

Never imports kopf or a Kubernetes client; talks to the operator only through
`splatops.contract` (stdout JSON lines, the termination message, exit codes).
"""

# Pillow must load before pycolmap in every process: pycolmap's wheel bundles a zlib whose
# symbols otherwise win, and Pillow's PNG encoder then aborts (free(): invalid pointer).
import PIL.Image  # noqa: E402,F401
