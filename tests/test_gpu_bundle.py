"""``scripts/gpu_bundle.py``: the GPU machine's wheels, repacked to fit 64 MiB, installed without a registry."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bundle.py"
spec = importlib.util.spec_from_file_location("gpu_bundle", SCRIPT)
gpu_bundle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_bundle)


def tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel of a package ``tinypkg`` with a RECORD of right hashes, as pip checks them."""
    files = {"tinypkg/__init__.py": b"VALUE = 42\n" + b"# padding\n" * 5000,
             "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
             "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items()) + "tinypkg-1.0.dist-info/RECORD,,\n"
    wheel = folder / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for name, data in files.items():
            out.writestr(name, data)
        out.writestr("tinypkg-1.0.dist-info/RECORD", record)
    return wheel


def test_a_repacked_wheel_decompresses_to_the_same_files_and_installs_without_a_registry(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as original:
        files = {info.filename: original.read(info) for info in original.infolist()}
    packed = gpu_bundle.repack_compressed(str(wheel))
    assert packed.endswith(".whl.xz") and not wheel.exists()
    restored = gpu_bundle.decompress(packed)
    with zipfile.ZipFile(restored) as copy:
        assert {info.filename: copy.read(info) for info in copy.infolist()} == files
        assert all(info.compress_type == zipfile.ZIP_STORED for info in copy.infolist())
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    restored], check=True)  # pip checks the wheel's RECORD hashes against the stored files
    assert (target / "tinypkg" / "__init__.py").read_text().startswith("VALUE = 42")


def test_the_executable_bit_of_a_shared_library_survives_the_repack(tmp_path: Path) -> None:
    wheel = tmp_path / "lib-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as out:
        info = zipfile.ZipInfo("lib/_native.so")
        info.external_attr = 0o100755 << 16
        out.writestr(info, b"\x7fELF" + b"\0" * 100)
    restored = gpu_bundle.decompress(gpu_bundle.repack_compressed(str(wheel)))
    with zipfile.ZipFile(restored) as copy:
        assert (copy.getinfo("lib/_native.so").external_attr >> 16) & 0o777 == 0o755


def test_a_bundle_over_the_limit_is_refused_with_the_sizes_and_the_fix() -> None:
    gpu_bundle.check_size(60 * 2**20, 3 * 2**20)  # 63 MiB fits
    with pytest.raises(gpu_bundle.BundleError, match=r"62\.0 MiB.*3\.0 MiB.*65\.0 MiB.*fewer cases"):
        gpu_bundle.check_size(62 * 2**20, 3 * 2**20)


def test_missing_inputs_are_refused_before_any_download_or_install(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bundle"
    assert gpu_bundle.main(["build", "--raw", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "No nnU-Net raw dataset" in capsys.readouterr().err and not out.exists()
    assert gpu_bundle.main(["install", "--bundle", str(out), "--env", str(tmp_path / "env")]) == 2
    assert "run `python3 scripts/gpu_bundle.py build`" in capsys.readouterr().err
    assert not (tmp_path / "env").exists()


def test_the_bundle_and_its_environment_are_never_committed() -> None:
    ignored = subprocess.run(["git", "check-ignore", "gpu_bundle/wheels/x.whl", ".gpu_env/bin/python"],
                             cwd=SCRIPT.parents[1], capture_output=True, text=True)
    assert ignored.stdout.split() == ["gpu_bundle/wheels/x.whl", ".gpu_env/bin/python"]
