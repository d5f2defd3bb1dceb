#!/usr/bin/env bash
# Renders and validates the Helm chart (tests/helm/test_chart.py), on a machine with nothing but
# Python >= 3.10, pip and access to PyPI:
#   1. creates .venv at the repo root when missing;
#   2. installs tests/helm/requirements.txt into it when they changed since the last install;
#      helm-python-sdk brings Helm itself as a shared library inside its wheel (no helm binary,
#      no Go), so only wheels are accepted for it: its sdist would need a Go toolchain;
#   3. builds target/debug/waypost unless WAYPOST_BIN names a binary (the tests run `waypost check`);
#   4. runs pytest on tests/helm (skips are listed with their reason); extra arguments go to
#      pytest (e.g. -k native, -x).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.venv"
requirements="$root/tests/helm/requirements.txt"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "run.sh: creating $venv" >&2
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        # Debian's python3 without python3-venv has no ensurepip: make the venv without pip and
        # let the system's pip install into it (pip --python).
        rm -rf "$venv"
        "$python" -m venv --without-pip "$venv"
    fi
fi

if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    pip=("$venv/bin/python" -m pip)
else
    pip=("$python" -m pip --python "$venv/bin/python")
fi

# The stamp records which requirements are installed, so a changed file reinstalls.
stamp="$venv/.tests-helm-requirements"
if ! cmp -s "$requirements" "$stamp"; then
    echo "run.sh: installing $(basename "$requirements") into $venv" >&2
    "${pip[@]}" install --quiet --disable-pip-version-check --only-binary helm-python-sdk -r "$requirements" || {
        echo "run.sh: pip install failed. helm-python-sdk has wheels for glibc >= 2.28 (x86_64, aarch64) and macOS only." >&2
        exit 1
    }
    # The native library must load here (wrong libc or architecture shows up now, not mid-test).
    "$venv/bin/python" -c 'import helm_python as h; h.helm_c_version()' || {
        echo "run.sh: helm-python-sdk is installed but its bundled libhelm_c does not load on this machine." >&2
        exit 1
    }
    cp "$requirements" "$stamp"
fi

if [ -z "${WAYPOST_BIN:-}" ]; then
    # A no-op when the binary is up to date. With a shared target dir, cargo may print
    # "Blocking waiting for file lock" while another build runs: it waits, then goes on.
    (cd "$root" && cargo build --quiet --bin waypost)
    export WAYPOST_BIN="$root/target/debug/waypost"
fi

cd "$root"
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the work tree
exec "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider tests/helm "$@"
