#!/usr/bin/env bash
# Pillow's own test images (Tests/images of the sdist of the installed Pillow) as a torture set
# for `cbir ingest` (tests/test_pillow_corpus.py):
#
#   export CBIR_PILLOW_CORPUS="$(bash .ci/pillow_corpus.sh | tail -n 1)"
#
# Usage: pillow_corpus.sh [CACHE_DIR]   (default .ci-cache; a relative CACHE_DIR is taken from the
# repository root, wherever the script is run from)
# Downloads the sdist only when it is not in CACHE_DIR yet, extracts only */Tests/images/* into
# CACHE_DIR/pillow-images only when that is not done yet, and prints the absolute path of the
# extracted Tests/images folder as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

cache="${1:-.ci-cache}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

version="$(python3 -c 'import PIL; print(PIL.__version__)')" || {
    echo "pillow_corpus.sh: Pillow is not importable by python3" >&2
    exit 1
}
# Older releases were uploaded as Pillow-X.tar.gz, newer ones as pillow-X.tar.gz.
find_sdist() {
    local f
    for f in "$cache/pillow-$version.tar.gz" "$cache/Pillow-$version.tar.gz"; do
        if [[ -s "$f" ]]; then
            echo "$f"
            return 0
        fi
    done
    return 1
}

if ! sdist="$(find_sdist)"; then
    echo "pillow_corpus.sh: downloading the Pillow $version sdist into $cache" >&2
    if ! python3 -m pip download -q --no-deps --no-binary :all: "pillow==$version" -d "$cache" >&2; then
        echo "pillow_corpus.sh: could not download the sdist of pillow==$version (offline? put pillow-$version.tar.gz in $cache)" >&2
        exit 1
    fi
    if ! sdist="$(find_sdist)"; then
        echo "pillow_corpus.sh: pip download finished but no pillow-$version.tar.gz is in $cache" >&2
        exit 1
    fi
fi

dest="$cache/pillow-images"
top="$(basename "$sdist" .tar.gz)"
images="$dest/$top/Tests/images"
if [[ ! -f "$images/.complete" ]]; then
    # A partial earlier extraction (interrupted) is replaced, never mixed with a new one.
    rm -rf "${dest:?}/$top"
    mkdir -p "$dest"
    if ! tar -xzf "$sdist" -C "$dest" --wildcards '*/Tests/images/*'; then
        echo "pillow_corpus.sh: could not extract Tests/images from $sdist" >&2
        exit 1
    fi
    if [[ ! -d "$images" ]]; then
        echo "pillow_corpus.sh: $sdist has no $top/Tests/images folder" >&2
        exit 1
    fi
    # Marks a finished extraction; a hidden name, so cbir's scan never sees it.
    touch "$images/.complete"
fi

echo "$images"
