"""benchmarks/gpu_compare.py's pure parts: job lines, where the profile goes, kernel families.
(The harness runs on the GPU machine only; these are what its numbers in benchmarks/README.md rest on.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_compare.py"
_spec = importlib.util.spec_from_file_location("gpu_compare", _PATH)
assert _spec and _spec.loader
gc = importlib.util.module_from_spec(_spec)
sys.modules["gpu_compare"] = gc  # dataclasses look their module up there
_spec.loader.exec_module(gc)


@pytest.mark.parametrize(
    ("line", "name", "gpu", "kind", "args", "group"),
    [
        ("ours30k-1@0:ours:--steps 30000", "ours30k-1", 0, "ours", ["--steps", "30000"], "ours30k"),
        ("ref7k-2@1:ref:--max-steps 7000 --data-factor 4", "ref7k-2", 1, "ref",
         ["--max-steps", "7000", "--data-factor", "4"], "ref7k"),
        ("solo:ours:", "solo", 0, "ours", [], "solo"),
    ],
)
def test_job_lines(line, name, gpu, kind, args, group):
    job = gc.Job.parse(line)
    assert (job.name, job.gpu, job.kind, job.args, job.group) == (name, gpu, kind, args, group)


def test_a_job_of_another_kind_is_refused():
    with pytest.raises(SystemExit, match="KIND must be ours or ref"):
        gc.Job.parse("x@0:theirs:--steps 1")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--steps", "7000", "--profile-steps", "5:9"], ["--steps", "7000", "--profile-steps", "5:9", "--profile-out", "P"]),
        # everything after --extra goes to splatops-train, so the harness's own flag must come first
        (["--profile-steps", "5:9", "--extra", "--visible-adam"],
         ["--profile-steps", "5:9", "--profile-out", "P", "--extra", "--visible-adam"]),
        (["--steps", "7000"], ["--steps", "7000"]),
    ],
)
def test_the_profile_file_is_named_before_extra(tmp_path, args, expected):
    job = gc.with_profile_out(gc.Job("j", 0, "ours", args), tmp_path)
    assert job.args == [str(tmp_path / "j.profile.json") if a == "P" else a for a in expected]


@pytest.mark.parametrize(
    ("kernel", "family"),
    [
        ("void gsplat::rasterize_to_pixels_3dgs_bwd_kernel<3u, float>(...)", "rasterize backward"),
        ("triton_per_fused_abs_add_cat_mean_mul_0", "loss, compiled (Inductor's Triton kernels)"),
        ("void gsplat::adam_kernel<float>(unsigned int, ...)", "optimizer (Adam)"),
        ("void at::native::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata<4>, FusedAdamMathFunctor>", "optimizer (Adam)"),
        ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x32x8", "SSIM (matmul blur / fused)"),
        ("void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>", "elementwise + reductions"),
        ("Memset (Device)", "other"),
    ],
)
def test_kernel_families(kernel, family):
    profile = {"steps": 2, "kernels": [{"name": kernel, "us": 3000.0, "calls": 2}]}
    assert gc.families(profile) == {family: 1.5}
