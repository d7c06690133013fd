#!/usr/bin/env bash
# Puts the CIFAR-10 binary version (data_batch_1..5.bin, test_batch.bin,
# batches.meta.txt) where cfx-train reads it (data.dir, default data/cifar10).
#
# Order of preference:
#   1. DEST already holds the six .bin files of the right size: nothing to do.
#   2. A local copy exists ($CIFAR10_LOCAL_DIR, else ../shared/data/cifar10
#      next to the repository): symlink its files into DEST (--copy: copy),
#      after checking their sizes and, if it has one, its SHA256SUMS.
#   3. Download the official cifar-10-binary.tar.gz, check its MD5 and unpack
#      cifar-10-batches-bin/* into DEST.
set -euo pipefail

readonly RECORD_FILE_BYTES=30730000 # 10,000 records of 3,073 bytes
readonly BIN_FILES=(data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin
    data_batch_5.bin test_batch.bin)
readonly META_FILE=batches.meta.txt
# Overridable for mirrors (and for testing the download path offline).
readonly URL=${CIFAR10_URL:-https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz}
readonly MD5=${CIFAR10_MD5:-c32a1d4ab5d03f1284b67883e8d87530}

prog=$(basename "$0")
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    cat <<EOF
usage: tools/get_cifar10.sh [--copy] [--download] [DEST]

Puts the CIFAR-10 binary version into DEST (default: data/cifar10 in the
repository, $repo_root/data/cifar10).

  1. If DEST already holds the six .bin files of $RECORD_FILE_BYTES bytes, does nothing.
  2. Else, if a local copy exists (\$CIFAR10_LOCAL_DIR, or ../shared/data/cifar10
     next to the repository), symlinks its files into DEST after checking their
     sizes and its SHA256SUMS, if any.
  3. Else downloads $URL,
     checks its MD5 and unpacks cifar-10-batches-bin/* into DEST.

options:
  --copy       copy the local files instead of symlinking them
  --download   skip local copies and download
  -h, --help   print this help

environment: CIFAR10_LOCAL_DIR (local copy), CIFAR10_URL and CIFAR10_MD5 (a mirror)
EOF
}

die() {
    echo "$prog: $*" >&2
    exit 1
}

# Size of a file in bytes, following symlinks; empty if it is not a file.
file_size() {
    if [[ -f $1 ]]; then
        wc -c <"$1" | tr -d ' '
    fi
}

# True if dir holds all six .bin files of the right size.
has_bins() {
    local dir=$1 f
    for f in "${BIN_FILES[@]}"; do
        [[ $(file_size "$dir/$f") == "$RECORD_FILE_BYTES" ]] || return 1
    done
}

# Fails with the first file of dir whose size is wrong.
check_bins() {
    local dir=$1 f size
    for f in "${BIN_FILES[@]}"; do
        size=$(file_size "$dir/$f")
        [[ -n $size ]] || die "$dir/$f: missing"
        [[ $size == "$RECORD_FILE_BYTES" ]] ||
            die "$dir/$f: $size bytes, expected $RECORD_FILE_BYTES"
    done
}

# Checks the files we use against dir/SHA256SUMS, if there is one.
check_sha256() {
    local dir=$1 lines out bad
    [[ -f $dir/SHA256SUMS ]] || return 0
    local tool
    if command -v sha256sum >/dev/null; then
        tool=(sha256sum)
    elif command -v shasum >/dev/null; then
        tool=(shasum -a 256)
    else
        echo "$prog: warning: no sha256sum or shasum; not checking $dir/SHA256SUMS" >&2
        return 0
    fi
    lines=$(grep -E '^[0-9a-fA-F]{64} [ *](data_batch_[1-5]\.bin|test_batch\.bin|batches\.meta\.txt)$' \
        "$dir/SHA256SUMS" || true)
    [[ -n $lines ]] || die "$dir/SHA256SUMS: lists none of the CIFAR-10 files"
    echo "checking SHA256SUMS in $dir ..."
    if ! out=$(cd "$dir" && printf '%s\n' "$lines" | "${tool[@]}" -c - 2>&1); then
        bad=$(printf '%s\n' "$out" | grep -v ': OK$' | head -n 1)
        die "$dir/SHA256SUMS: checksum mismatch: ${bad:-$out}"
    fi
}

# Physical path of an existing directory.
real_dir() {
    (cd -P "$1" && pwd -P)
}

install_local() {
    local src=$1 dest=$2 copy=$3 f
    src=$(real_dir "$src")
    check_bins "$src"
    check_sha256 "$src"
    mkdir -p "$dest" || die "$dest: cannot create directory"
    [[ $(real_dir "$dest") != "$src" ]] || die "$dest: is the local copy itself"
    local files=("${BIN_FILES[@]}")
    if [[ -f $src/$META_FILE ]]; then
        files+=("$META_FILE")
    fi
    for f in "${files[@]}"; do
        if ((copy)); then
            cp -f "$src/$f" "$dest/.$f.part" || die "$dest/$f: copy failed"
            mv -f "$dest/.$f.part" "$dest/$f" || die "$dest/$f: cannot write"
        else
            rm -f "$dest/$f"
            ln -s "$src/$f" "$dest/$f" || die "$dest/$f: cannot create symlink"
        fi
    done
    check_bins "$dest"
    if ((copy)); then
        echo "CIFAR-10 copied from $src into $dest"
    else
        echo "CIFAR-10 linked into $dest (symlinks to $src)"
    fi
}

# The first or last non-blank line of a command's output (its error).
first_line() {
    printf '%s\n' "$1" | sed -e '/^[[:space:]]*$/d' | head -n 1
}
last_line() {
    printf '%s\n' "$1" | sed -e '/^[[:space:]]*$/d' | tail -n 1
}

download() {
    local dest=$1 work tarball out actual f
    mkdir -p "$dest" || die "$dest: cannot create directory"
    # Work next to DEST so the final moves stay on one file system.
    work=$(mktemp -d "$dest/.get_cifar10.XXXXXX") || die "$dest: cannot create a temporary folder"
    # shellcheck disable=SC2064 # expand $work now: it is local to this function
    trap "rm -rf $(printf %q "$work")" EXIT
    tarball=$work/cifar-10-binary.tar.gz

    echo "downloading $URL ..."
    if command -v curl >/dev/null; then
        out=$(curl -fsSL --connect-timeout 30 --retry 2 -o "$tarball" "$URL" 2>&1) ||
            die "download of $URL failed (no network?): $(last_line "$out")"
    elif command -v wget >/dev/null; then
        out=$(wget -nv --timeout=30 --tries=2 -O "$tarball" "$URL" 2>&1) ||
            die "download of $URL failed (no network?): $(last_line "$out")"
    else
        die "neither curl nor wget is installed; cannot download $URL"
    fi

    if command -v md5sum >/dev/null; then
        actual=$(md5sum "$tarball" | cut -d ' ' -f 1)
    elif command -v md5 >/dev/null; then
        actual=$(md5 -q "$tarball")
    else
        die "neither md5sum nor md5 is installed; cannot check the download"
    fi
    [[ $actual == "$MD5" ]] ||
        die "$URL: bad checksum (MD5 $actual, expected $MD5); download corrupted or altered"

    out=$(tar -xzf "$tarball" -C "$work" cifar-10-batches-bin 2>&1) ||
        die "$URL: cannot unpack cifar-10-batches-bin: $(first_line "$out")"
    check_bins "$work/cifar-10-batches-bin"
    for f in "$work"/cifar-10-batches-bin/*; do
        rm -f "$dest/$(basename "$f")" # may be a stale symlink into a read-only copy
        mv -f "$f" "$dest/" || die "$dest: cannot move $(basename "$f") into place"
    done
    check_bins "$dest"
    echo "CIFAR-10 downloaded into $dest"
}

main() {
    local copy=0 force_download=0 dest=""
    while (($#)); do
        case $1 in
        --copy) copy=1 ;;
        --download) force_download=1 ;;
        -h | --help)
            usage
            return 0
            ;;
        --)
            shift
            break
            ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *)
            [[ -z $dest ]] || die "more than one DEST given (see --help)"
            dest=$1
            ;;
        esac
        shift
    done
    if (($#)); then
        [[ -z $dest && $# -eq 1 ]] || die "more than one DEST given (see --help)"
        dest=$1
    fi
    dest=${dest:-$repo_root/data/cifar10}

    if has_bins "$dest"; then
        echo "CIFAR-10 already present in $dest (six .bin files of $RECORD_FILE_BYTES bytes)"
        return 0
    fi

    if ((!force_download)); then
        if [[ -n ${CIFAR10_LOCAL_DIR:-} ]]; then
            [[ -d $CIFAR10_LOCAL_DIR ]] || die "CIFAR10_LOCAL_DIR=$CIFAR10_LOCAL_DIR: not a directory"
            install_local "$CIFAR10_LOCAL_DIR" "$dest" "$copy"
            return 0
        fi
        local shared=$repo_root/../shared/data/cifar10
        if [[ -d $shared ]] && has_bins "$shared"; then
            install_local "$shared" "$dest" "$copy"
            return 0
        fi
    fi
    download "$dest"
}

main "$@"
