"""Benchmark shim, installed as gsplat/csrc.py by setup.sh: gsplat's CUDA extension built on an
earlier lent machine (same torch, same gsplat sources), loaded directly instead of JIT-compiling
it again (~62 s). Any failure falls
back to gsplat's own JIT build (its import of gsplat.csrc expects ImportError)."""
import importlib.machinery, importlib.util, os, sys
try:
    _p = os.environ["GSPLAT_PREBUILT_SO"]
    _l = importlib.machinery.ExtensionFileLoader("gsplat_cuda", _p)
    _s = importlib.util.spec_from_file_location("gsplat_cuda", _p, loader=_l)
    _m = importlib.util.module_from_spec(_s)
    _l.exec_module(_m)
    sys.modules[__name__] = _m
except Exception as exc:  # noqa: BLE001
    raise ImportError(f"prebuilt gsplat extension unusable: {exc}") from exc
