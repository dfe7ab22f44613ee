#!/usr/bin/env bash
# Runs a port's libFuzzer harnesses (PORT_DIR/build/fuzz/) for a bounded time each; the C port's
# `make fuzz` and the C++ port's CMake target `fuzz` call it:
#
#   scripts/fuzz/run.sh PORT_DIR SECONDS [NAME...]   NAME: checkpoint, gguf, tokenizer (default: all)
#
# The corpus grows in PORT_DIR/build/fuzz/corpus/NAME, seeded from tests/data/fuzz-seeds/NAME
# (committed, tiny, shared by the ports) and from the real stories260K files when the store finds
# them (written once into build/fuzz/real/ by scripts/fuzz/seeds.py). A crash, leak, sanitizer report or timeout stops that harness and leaves the
# input in build/fuzz/artifacts/; the exit status is then 1. Extra libFuzzer flags: FUZZ_FLAGS.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "${1:?usage: scripts/fuzz/run.sh PORT_DIR SECONDS [checkpoint|gguf|tokenizer ...]}"
seconds=${2:?usage: scripts/fuzz/run.sh PORT_DIR SECONDS [checkpoint|gguf|tokenizer ...]}
shift 2
names=("$@")
((${#names[@]})) || names=(checkpoint gguf tokenizer)

python=${POLYLLAMA_PYTHON:-$root/.venv/bin/python}
if [ ! -d build/fuzz/real ] && [ -x "$python" ]; then
  "$python" "$here/seeds.py" real build/fuzz/real.tmp && mv build/fuzz/real.tmp build/fuzz/real
fi

status=0
for name in "${names[@]}"; do
  bin=build/fuzz/fuzz_$name
  [ -x "$bin" ] || { echo "error: $bin is not built (C: make fuzz-build; C++: cmake --build build/fuzz)" >&2; exit 2; }
  mkdir -p "build/fuzz/corpus/$name" build/fuzz/artifacts
  dirs=("build/fuzz/corpus/$name" "$root/tests/data/fuzz-seeds/$name")
  [ -d "build/fuzz/real/$name" ] && dirs+=("build/fuzz/real/$name")
  echo "== fuzz_$name: ${seconds} s" >&2
  # shellcheck disable=SC2086
  "$bin" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -dict="$here/formats.dict" -artifact_prefix="build/fuzz/artifacts/$name-" -print_final_stats=1 \
    ${FUZZ_FLAGS:-} "${dirs[@]}" || { echo "error: fuzz_$name found a problem (above)" >&2; status=1; }
done
exit $status
