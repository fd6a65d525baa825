# Source on the lent GPU machine from the carried benchmark folder (see benchmarks/README.md,
# "Side by side with the reference"): wheels from ../.whl, the stripped pycolmap as pycolmap.tar.xz,
# and either a prebuilt gsplat extension + fused-ssim under ext/ (from an earlier call's ext.tgz)
# or, without ext/, gsplat's JIT build (~62 s) and fused-ssim built from fused-ssim/ (~60 s, in parallel).
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl || return 1
tar -xJf pycolmap.tar.xz -C /tmp/site || return 1
export PYTHONPATH=/tmp/site:$PWD/operator:$PWD/trainer_image
if [ -f ext/torch_extensions/py312_cu130/gsplat_cuda/gsplat_cuda.so ]; then
  cp benchmarks/device/gsplat_csrc_shim.py /tmp/site/gsplat/csrc.py
  export GSPLAT_PREBUILT_SO=$PWD/ext/torch_extensions/py312_cu130/gsplat_cuda/gsplat_cuda.so
  export PYTHONPATH=$PWD/ext/fssim:$PYTHONPATH
else
  (cd fused-ssim && python3 -m pip install -q --no-build-isolation --no-deps --no-cache-dir --target /tmp/fssim . > /tmp/fssim.log 2>&1) &
  export PYTHONPATH=/tmp/fssim:$PYTHONPATH
fi
python3 benchmarks/train_fox.py --warm || return 1
wait
python3 -c 'import fused_ssim, pycolmap, tyro; print("harness imports ok")' || return 1
# To reuse the builds in the next call: tar czf $OUT/ext.tgz -C ~/.cache torch_extensions -C /tmp fssim
echo "setup done at ${SECONDS}s"
