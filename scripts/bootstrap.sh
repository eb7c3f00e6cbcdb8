#!/usr/bin/env bash
# Idempotent developer set-up for napari-paser: system packages, .venv, editable install with
# the gui, dev and docs extras (what `make test`, `make docs` and CI need).
#
# Run by every `make` target that needs the environment (`make setup`). A second run with
# nothing changed only checks (0.2-0.4 s measured): the Debian packages are queried with
# dpkg-query and the Python install is skipped when the stamp matches.
#
#   1. Xvfb and the Debian packages Qt needs to draw under it (tests are headless through
#      pytest-xvfb; list in APT_PACKAGES below): installed only when missing, `apt-get update`
#      only then, sudo only when not root. Skipped with a warning where there is no dpkg.
#   2. .venv created with $PYTHON (default python3) when missing or broken.
#   3. `pip install -c requirements/constraints.txt torch==2.13.0 -e ".[gui,dev,docs]"` (and PyQt5
#      removed where an older set-up left it beside PyQt6) when the stamp
#      .venv/.paser-stamp does not hold the current hash of pyproject.toml,
#      requirements/constraints.txt, this script and the venv's Python version. pip runs
#      without --upgrade: what already satisfies the requirements is left alone.
#
# Environment: PYTHON (interpreter that creates .venv), PASER_FORCE_INSTALL=1 (ignore the stamp).
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(dirname "$(dirname "$SELF")")"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.paser-stamp"
CONSTRAINTS="requirements/constraints.txt"
TORCH_REQ="torch==2.13.0"
# Xvfb, plus the shared libraries the Qt 6 wheel's xcb platform plugin (PyQt6, the `gui` extra)
# and vispy's OpenGL need: the list is what `ldd` reports for PyQt6's libqxcb.so,
# libQt6XcbQpa, libQt6Gui, libQt6OpenGL and the xcb GL integrations, mapped to Debian packages
# (without libxcb-cursor0 Qt >= 6.5 aborts: 'Could not load the Qt platform plugin "xcb"';
# QT_DEBUG_PLUGINS=1 names the missing library). libxcb-xinerama0 serves an older PyQt5 install.
APT_PACKAGES=(
    xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
    libxcb-randr0 libxcb-shape0 libxcb-sync1 libxcb-xfixes0 libxcb-xkb1 libxcb-xinerama0 libx11-xcb1
    libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3 libglib2.0-0
    libgl1 libegl1 libgl1-mesa-dri
)

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# --- 1. Debian packages ------------------------------------------------------------------
missing_packages() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$pkg"
        fi
    done
}

if command -v dpkg-query >/dev/null 2>&1; then
    mapfile -t MISSING < <(missing_packages)
    if ((${#MISSING[@]})); then
        if [[ $(id -u) -eq 0 ]]; then
            SUDO=()
        elif command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo)
        else
            die "missing Debian packages ${MISSING[*]} and not root and no sudo; install them and rerun"
        fi
        say "installing Debian packages: ${MISSING[*]}"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
        mapfile -t STILL < <(missing_packages)
        ((${#STILL[@]} == 0)) || die "apt-get did not install: ${STILL[*]}"
    fi
else
    say "warning: no dpkg-query (not Debian/Ubuntu); make sure Xvfb and Qt's xcb libraries are installed"
fi

# --- 2. virtual environment --------------------------------------------------------------
# The lock serialises concurrent runs (e.g. `make test` and `make demo` in two shells).
mkdir -p "$VENV"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV/.paser-lock"
    flock 9
fi

if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (set PYTHON=/path/to/python3.10+)"
    say "creating .venv with $("$PYTHON" --version 2>&1)"
    rm -f "$STAMP"
    "$PYTHON" -m venv "$VENV"
fi

# --- 3. Python packages ------------------------------------------------------------------
want="$( {
    cat pyproject.toml "$CONSTRAINTS" "$SELF"
    "$VENV/bin/python" -c 'import sys; print(sys.version)'
} | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"

# Cheap sanity check beside the stamp: the project is installed (metadata, so entry points
# such as `paser` and napari's manifest exist) and imports from this checkout. -I keeps the
# current directory off sys.path, so the check cannot pass by importing the source tree.
installed_here() {
    "$VENV/bin/python" -I - "$ROOT" <<'EOF' >/dev/null 2>&1
import importlib.metadata, importlib.util, pathlib, sys
importlib.metadata.distribution("napari-paser")
spec = importlib.util.find_spec("napari_paser")
root = pathlib.Path(sys.argv[1]).resolve()
sys.exit(0 if spec and pathlib.Path(spec.origin).resolve().is_relative_to(root) else 1)
EOF
}

if [[ "${PASER_FORCE_INSTALL:-0}" != 1 && "$want" == "$have" ]] && installed_here; then
    exit 0
fi

say "installing Python packages into .venv (first run, pyproject.toml/constraints changed, or project not installed)"
rm -f "$STAMP"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q \
    -c "$CONSTRAINTS" "$TORCH_REQ" -e ".[gui,dev,docs]"
# The gui extra moved from PyQt5 to PyQt6. A .venv made before keeps PyQt5 beside the new PyQt6, and
# then qtpy (napari) would pick PyQt5 while pytest-qt picks PyQt6: one binding only.
if "$VENV/bin/python" -m pip show -q PyQt6 >/dev/null 2>&1 && "$VENV/bin/python" -m pip show -q PyQt5 >/dev/null 2>&1; then
    say "removing PyQt5 from .venv: the gui extra uses Qt 6 (PyQt6)"
    "$VENV/bin/python" -m pip uninstall --disable-pip-version-check -q -y PyQt5 PyQt5-Qt5 PyQt5-sip
fi
installed_here || die "napari_paser does not import from $ROOT after the install"
printf '%s\n' "$want" > "$STAMP"
say "done; stamp written to .venv/.paser-stamp"
