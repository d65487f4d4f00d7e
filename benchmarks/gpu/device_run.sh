#!/usr/bin/env bash
# The H100 comparison (see README.md beside this file). Long steps run detached and are
# polled, because a device call is limited to 10 minutes.
set -euo pipefail
CARRY=${1:?usage: device_run.sh CARRY_DIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p /tmp/st /tmp/src /tmp/site /tmp/scripts /tmp/skel "${OUT:-/tmp/out}"

if [ ! -f /tmp/st/build.done ]; then
  tar xzf "$CARRY"/llama_cpp_python-0.3.36.tar.gz -C /tmp/src
  cp "$CARRY"/build.sh "$CARRY"/gen.sh "$CARRY"/gen_model.py /tmp/scripts/
  cp "$CARRY"/skeleton.gguf "$CARRY"/tensors.json /tmp/skel/
  pip install --no-deps --target /tmp/site "$CARRY"/gguf-*.whl "$CARRY"/llama_cpp_python-*.whl
  setsid nohup bash /tmp/scripts/build.sh > /tmp/st/build.log 2>&1 &
  setsid nohup bash /tmp/scripts/gen.sh > /tmp/st/gen.log 2>&1 &
  echo "building llama.cpp and generating the model; run this script again to continue"
  exit 0
fi
[ -f /tmp/st/gen.done ] || { echo "model generation still running"; exit 0; }
[ "$(cat /tmp/st/build.done)" = 0 ] || { echo "llama.cpp build failed:"; tail -30 /tmp/st/build.log; exit 1; }

export PYTHONPATH=/tmp/site:$ROOT
export LLAMA_CPP_LIB_PATH=/tmp/lcbuild/bin
python3 "$ROOT"/benchmarks/engine_throughput.py --model /tmp/models/q8.gguf \
  --parallel 1,4,16,64 --ignore-eos --n-gpu-layers 999 --threads 8 --max-tokens 256 --sampling greedy \
  --llama-server /tmp/lcbuild/bin/llama-server --repeats 3 > "${OUT:-/tmp/out}"/engine_throughput-h100.json
/tmp/lcbuild/bin/llama-batched-bench -m /tmp/models/q8.gguf -ngl 999 -c 32768 -b 2048 -ub 512 \
  -npp 45 -ntg 256 -npl 1,4,16,64 > "${OUT:-/tmp/out}"/batched-bench-h100.txt 2>&1
cat "${OUT:-/tmp/out}"/engine_throughput-h100.json
