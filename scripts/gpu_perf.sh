#!/usr/bin/env bash
# The GPU checks of the performance issue, in one call: DiT-XL/2 bf16 training MFU with the SDPA kernel that ran,
# then every baseline next to its reference implementation (diffusers) at XL in bf16 and at S in fp32 and bf16,
# each with its time split (`ldmbench perf --breakdown`), and a torch.compile row for DiT-XL/2.
#
# A lent GPU machine has PyTorch, Lightning, transformers and friends but no network and none of the packages below;
# they travel as wheels. Here (with network), once:
#     bash scripts/gpu_perf.sh --wheels          # downloads them into .whl/ (git-ignored), ~10 MB
# Then on the GPU machine, with the device tool:
#     run(command="bash scripts/gpu_perf.sh", carry=[".whl"], timeout_s=590)
# The tables land in $OUT (or ./gpu_perf when OUT is unset): xl_bf16.md, s_fp32_bf16.md, dit_xl_compile.md,
# fsdp_bf16.md, log.txt.
#
# Knobs (environment): DEVICE (cuda), SIZES ("XL S": the big and the shared size), MODELS (all six), THREADS,
# COMPILE (1 on a GPU, 0 on a CPU, where inductor takes minutes per model), PERF_ARGS (appended to every
# `ldmbench perf` call; later flags win). Dry run on a CPU in seconds:
#     DEVICE=cpu SIZES=tiny MODELS=dit PERF_ARGS="--batch 2 --repeats 1 --precision fp32" bash scripts/gpu_perf.sh
set -euo pipefail

WHEELS=(
    diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2 lazy_importer==0.1.0
    jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 importlib_resources==6.5.2
    torch_fidelity==0.4.0
)

if [[ "${1:-}" == "--wheels" ]]; then
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    exit 0
fi

OUT="${OUT:-gpu_perf}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1
DEVICE="${DEVICE:-cuda}"
THREADS="${THREADS:-$([[ "$DEVICE" == cuda ]] && echo 16 || echo 1)}"
COMPILE="${COMPILE:-$([[ "$DEVICE" == cuda ]] && echo 1 || echo 0)}"
MODELS="${MODELS:-dit,pixart,mmdit,mdt,ldm,sdxl}"
read -r -a EXTRA <<< "${PERF_ARGS:-}"
read -r -a SIZES <<< "${SIZES:-XL S}"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>/dev/null || true
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'flash SDPA', torch.backends.cuda.flash_sdp_enabled())"
} 2>&1 | tee "$OUT/log.txt"

perf() {  # perf <output.md> <args...>
    local out="$1"
    shift
    python3 -m benchmark.cli perf --device "$DEVICE" --threads "$THREADS" --breakdown --output "$OUT/$out" "$@" \
        "${EXTRA[@]}" 2>&1 | tee -a "$OUT/log.txt"
}

big="${SIZES[0]}"
small="${SIZES[1]:-${SIZES[0]}}"
# 1. The headline: every baseline at the big size in bf16 (DiT-XL/2's MFU and kernel are its first row).
perf xl_bf16.md --models "$MODELS" --size "$big" --precision bf16 --repeats 10
# 2. The issue's shared configuration (S size, 256 tokens, batch 8), fp32 and bf16 autocast.
perf s_fp32_bf16.md --models "$MODELS" --size "$small" --batch 8 --precision fp32,bf16 --repeats 10
# 3. torch.compile of our DiT (inductor) against eager diffusers, bf16.
if [[ "$COMPILE" == 1 ]]; then
    perf dit_xl_compile.md --models dit --size "$big" --precision bf16 --repeats 10 --compile
else
    echo "torch.compile row skipped (COMPILE=0)" | tee -a "$OUT/log.txt"
fi
# 4. FSDP (benchmark/sharding.py) on one GPU: bf16 and activation checkpointing against the plain bf16-mixed step of
#    a DDP rank, seconds per step and peak memory, DiT at the big size (scripts/fsdp_perf.py; not yet run on a GPU).
python3 scripts/fsdp_perf.py --device "$DEVICE" --size "DiT-$big/2" --batch "${FSDP_BATCH:-32}" --steps 20 2>&1 \
    | tee -a "$OUT/log.txt" | grep '^|' > "$OUT/fsdp_bf16.md"
echo "done: $(ls "$OUT")" | tee -a "$OUT/log.txt"
