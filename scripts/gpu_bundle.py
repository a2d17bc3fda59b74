#!/usr/bin/env python3
"""The GPU check's bundle: what the lent GPU machine lacks, carried there as files (it reaches no package registry).

    python3 scripts/gpu_bundle.py build [--raw DATASET] [--out gpu_bundle] [--python-version 3.12]   # here
    python3 scripts/gpu_bundle.py install [--bundle gpu_bundle] [--env .gpu_env]                      # there

``build`` (on a machine with the registry) downloads the wheels of what nnU-Net 2.8 and this project import beyond the
GPU machine's own packages (``MISSING``), builds wheels of acvl-utils (published as source only) and of this
checkout, copies the raw dataset, and refuses a bundle that, together with the tracked working tree, is larger than
the 64 MiB one command may carry. To fit, each wheel larger than 2 MB is repacked as an uncompressed zip (the same
files, byte for byte, so pip checks the same RECORD hashes) compressed with xz: SimpleITK's 52.8 MB wheel becomes
about 28 MB.

``install`` (on the GPU machine, no registry) makes a virtual environment that sees the machine's own packages
(``--system-site-packages``: torch, numpy, scipy, ...), decompresses the ``.whl.xz`` files and installs every wheel
with ``pip install --no-index --no-deps``. nnU-Net also declares imagecodecs and dicom2nifti, which training and
prediction never import; ``--no-deps`` leaves them out.

Only the standard library is used, so that ``install`` runs before anything is installed.
"""

from __future__ import annotations

import argparse
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

CARRY_LIMIT_BYTES = 64 * 2**20
REPACK_ABOVE_BYTES = 2 * 10**6
# Beyond the GPU machine's packages (docs/usage.md, "On a GPU"); acvl-utils is built from its source distribution.
MISSING = ("nnunetv2>=2.8,<2.9", "SimpleITK", "blosc2", "ndindex", "numexpr", "connected-components-3d", "nibabel",
           "monai>=1.5,<2", "batchgenerators", "batchgeneratorsv2", "dynamic-network-architectures", "yacs",
           "graphviz", "fft-conv-pytorch", "httpx", "httpcore", "h11", "anyio", "sniffio")  # httpx: blosc2 imports it
FROM_SOURCE = ("acvl-utils",)
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64")


class BundleError(RuntimeError):
    """A bundle that cannot be built or installed (the message names the fix)."""


def repack_compressed(wheel: str) -> str:
    """Rewrites ``wheel`` as an uncompressed zip compressed with xz (``NAME.whl.xz``) and removes the wheel.

    Args:
        wheel: A wheel file.

    Returns:
        The path of the ``.whl.xz`` file.
    """
    target = wheel + ".xz"
    with zipfile.ZipFile(wheel) as source, lzma.open(target + ".part", "wb", preset=9 | lzma.PRESET_EXTREME) as out:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as stored:
            for info in source.infolist():
                entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                entry.external_attr = info.external_attr  # keeps the executable bit of shared libraries
                entry.compress_type = zipfile.ZIP_STORED
                with source.open(info) as data, stored.open(entry, "w", force_zip64=True) as copy:
                    shutil.copyfileobj(data, copy, 2**20)
    os.replace(target + ".part", target)
    os.remove(wheel)
    return target


def decompress(packed: str) -> str:
    """Writes the wheel of a ``.whl.xz`` file beside it and returns its path."""
    wheel = packed[:-len(".xz")]
    with lzma.open(packed, "rb") as source, open(wheel + ".part", "wb") as out:
        shutil.copyfileobj(source, out, 2**20)
    os.replace(wheel + ".part", wheel)
    return wheel


def folder_bytes(folder: str) -> int:
    """The total size of the files under ``folder``."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def tracked_bytes(repository: str) -> int:
    """The size of the tracked files of the checkout (the working tree that every command carries)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=repository, capture_output=True, check=True).stdout
    paths = [os.path.join(repository, p) for p in listed.decode().split("\0") if p]
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def check_size(bundle_bytes: int, tree_bytes: int, limit: int = CARRY_LIMIT_BYTES) -> None:
    """Refuses a bundle that does not fit one command together with the working tree.

    Raises:
        BundleError: Over the limit, naming the sizes and what to leave out.
    """
    total = bundle_bytes + tree_bytes
    if total > limit:
        raise BundleError(f"The bundle ({bundle_bytes / 2**20:.1f} MiB) and the tracked working tree "
                          f"({tree_bytes / 2**20:.1f} MiB) make {total / 2**20:.1f} MiB, over the {limit / 2**20:.0f} "
                          "MiB one command may carry: give a smaller dataset with --raw (fewer cases), or remove "
                          "large tracked files.")


def _pip(*arguments: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *arguments], check=True)


def build(raw: str, out: str, python_version: str, repository: str) -> None:
    """Builds the bundle in ``out`` (see the module docstring).

    Raises:
        BundleError: No dataset at ``raw``, or a bundle over the limit (``out`` is then removed).
    """
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        raise BundleError(f"No nnU-Net raw dataset at {raw} (no dataset.json): give --raw with the path of "
                          "Dataset004_Hippocampus.")
    shutil.rmtree(out, ignore_errors=True)
    wheels = os.path.join(out, "wheels")
    os.makedirs(wheels)
    platforms = [argument for p in PLATFORMS for argument in ("--platform", p)]
    _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version, *platforms,
         "-d", wheels, *MISSING)
    with tempfile.TemporaryDirectory() as sources:
        _pip("download", "-q", "--no-deps", "--no-binary=:all:", "-d", sources, *FROM_SOURCE)
        _pip("wheel", "-q", "--no-deps", "-w", wheels,
             *[os.path.join(sources, name) for name in sorted(os.listdir(sources))])
    _pip("wheel", "-q", "--no-deps", "-w", wheels, repository)
    for name in sorted(os.listdir(wheels)):
        path = os.path.join(wheels, name)
        if name.endswith(".whl") and os.path.getsize(path) > REPACK_ABOVE_BYTES:
            started = time.monotonic()
            size = os.path.getsize(path)
            packed = repack_compressed(path)
            print(f"repacked {name}: {size / 1e6:.1f} MB -> {os.path.getsize(packed) / 1e6:.1f} MB "
                  f"({time.monotonic() - started:.0f} s)")
    shutil.copytree(raw, os.path.join(out, os.path.basename(os.path.normpath(raw))))
    bundle, tree = folder_bytes(out), tracked_bytes(repository)
    try:
        check_size(bundle, tree)
    except BundleError:
        shutil.rmtree(out, ignore_errors=True)
        raise
    print(f"bundle {out}: {bundle / 2**20:.1f} MiB, with the working tree {(bundle + tree) / 2**20:.1f} MiB of "
          f"{CARRY_LIMIT_BYTES / 2**20:.0f} MiB")


def install(bundle: str, env: str) -> None:
    """Installs the bundle's wheels into a virtual environment ``env`` that sees the machine's own packages.

    Raises:
        BundleError: No bundle (``build`` it first, and carry it).
    """
    wheels = os.path.join(bundle, "wheels")
    if not os.path.isdir(wheels):
        raise BundleError(f"No bundle at {bundle}: run `python3 scripts/gpu_bundle.py build` on a machine with the "
                          "package registry and carry the folder along.")
    for name in sorted(os.listdir(wheels)):
        if name.endswith(".whl.xz"):
            decompress(os.path.join(wheels, name))
    python = os.path.join(env, "bin", "python")
    if not os.path.exists(python):
        # --without-pip where the machine's Python has no ensurepip; pip then installs through --python
        made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", env])
        if made.returncode != 0:
            shutil.rmtree(env, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env], check=True)
    has_pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0
    pip = [python, "-m", "pip"] if has_pip else [sys.executable, "-m", "pip", "--python", python]
    files = sorted(os.path.join(wheels, n) for n in os.listdir(wheels) if n.endswith(".whl"))
    subprocess.run([*pip, "install", "-q", "--no-index", "--no-deps", "--disable-pip-version-check", *files],
                   check=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; 2 for a bundle that cannot be built or installed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="download and pack the bundle (needs the package registry)")
    build_parser.add_argument("--raw", default="../shared/data/Dataset004_Hippocampus", help="raw dataset to carry")
    build_parser.add_argument("--out", default="gpu_bundle", help="bundle folder (git-ignored; default gpu_bundle)")
    build_parser.add_argument("--python-version", default="3.12",
                              help="the GPU machine's Python (default 3.12); the rehearsal here uses its own")
    install_parser = commands.add_parser("install", help="install the bundle (no registry needed)")
    install_parser.add_argument("--bundle", default="gpu_bundle")
    install_parser.add_argument("--env", default=".gpu_env")
    args = parser.parse_args(argv)
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        if args.command == "build":
            build(args.raw, args.out, args.python_version, repository)
        else:
            install(args.bundle, args.env)
    except BundleError as err:
        print(f"gpu_bundle: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
