#!/usr/bin/env bash
# Run a subset of the official Lua 5.4 test suite under `moonwall exec`.
#
# Usage: tests/lua-suite/run.sh TESTES_DIR [FILE.lua ...]
#
#   TESTES_DIR  directory holding the Lua 5.4 test files (bitwise.lua, ...);
#               a directory with a `testes/` subdirectory is accepted too.
#   FILE.lua    run only these files (default: all files listed below).
#
# Environment:
#   MOONWALL    moonwall binary (default: target/release/moonwall, else
#               target/debug/moonwall, relative to the repository root).
#
# See README.md in this directory for how to obtain the test files.
set -euo pipefail

readonly FILES=(
  bitwise.lua cstack.lua math.lua pm.lua sort.lua
  tpack.lua utf8.lua vararg.lua verybig.lua
)
# Helper modules of the test suite that the files above `require`.
readonly MODULES=(bwcoercion tracegc)
readonly LIMITS=(--fuel 100000000000 --timeout-ms 120000 --memory-mib 1024)

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)

die() { printf 'run.sh: %s\n' "$*" >&2; exit 2; }

[[ $# -ge 1 ]] || die "usage: $0 TESTES_DIR [FILE.lua ...]"
tests_dir=$1
shift
[[ -d $tests_dir ]] || die "not a directory: $tests_dir"
if [[ ! -f $tests_dir/bitwise.lua && -f $tests_dir/testes/bitwise.lua ]]; then
  tests_dir=$tests_dir/testes
fi
tests_dir=$(cd "$tests_dir" && pwd)

if [[ -n ${MOONWALL:-} ]]; then
  moonwall=$MOONWALL
  # Resolve a relative path before changing directory.
  [[ $moonwall == */* && $moonwall != /* ]] && moonwall=$PWD/$moonwall
elif [[ -x $repo_root/target/release/moonwall ]]; then
  moonwall=$repo_root/target/release/moonwall
elif [[ -x $repo_root/target/debug/moonwall ]]; then
  moonwall=$repo_root/target/debug/moonwall
else
  die "no moonwall binary in $repo_root/target/{release,debug}; build it or set MOONWALL"
fi
command -v "$moonwall" >/dev/null || die "not executable: $moonwall"

files=("${FILES[@]}")
[[ $# -gt 0 ]] && files=("$@")
for f in "${files[@]}"; do
  [[ -f $tests_dir/$f ]] || die "missing test file: $tests_dir/$f"
done

# Quote TEXT as a Lua long string whose closing bracket does not occur in it.
lua_long_string() {
  local text=$1 eq=''
  while [[ $text == *"]${eq}]"* ]]; do eq+='='; done
  # Lua skips a newline right after the opening bracket; the newline
  # before the closing one keeps TEXT's own last character out of it.
  printf '[%s[\n%s\n]%s]' "$eq" "$text" "$eq"
}

# First chunk: module sources for the prelude's `require`.
sources='_MOONWALL_SUITE_SOURCES = {'
for m in "${MODULES[@]}"; do
  [[ -f $tests_dir/$m.lua ]] || die "missing helper module: $tests_dir/$m.lua"
  sources+=$'\n'"  [\"$m\"] = $(lua_long_string "$(<"$tests_dir/$m.lua")"),"
done
sources+=$'\n}'
prelude=$(<"$script_dir/prelude.lua")

# `--eval=CHUNK` rather than `-e CHUNK`: a chunk may start with `-`.
evals=(
  --eval="$sources"
  --eval="$prelude"
  --eval='_soft = true'
  --eval='_port = true'
)

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

printf 'moonwall: %s\ntests:    %s\n\n' "$moonwall" "$tests_dir"

cd "$tests_dir"
failed=0
for f in "${files[@]}"; do
  start=$EPOCHREALTIME
  if "$moonwall" exec "${evals[@]}" "${LIMITS[@]}" --stats "$f" \
      >"$logs/out" 2>"$logs/err"; then
    rc=0
  else
    rc=$?
  fi
  end=$EPOCHREALTIME
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  stats=$(sed -n 's/^stats: //p' "$logs/err")
  if [[ $rc -eq 0 ]]; then
    printf 'PASS  %-12s %7ss  %s\n' "$f" "$secs" "$stats"
  else
    failed=$((failed + 1))
    printf 'FAIL  %-12s %7ss  exit %d  %s\n' "$f" "$secs" "$rc" "$stats"
    printf '      --- stdout (last 10 lines)\n'
    tail -n 10 "$logs/out" | sed 's/^/      /'
    printf '      --- stderr (last 20 lines)\n'
    grep -v '^stats: ' "$logs/err" | tail -n 20 | sed 's/^/      /'
  fi
done

printf '\n%d files: %d passed, %d failed\n' \
  "${#files[@]}" "$((${#files[@]} - failed))" "$failed"
[[ $failed -eq 0 ]]
