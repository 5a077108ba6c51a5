"""The vendor-library emulations of tests/native/, built with the system compiler.

Each emulation is written from one family's public declarations (see the head of
each C file), not from the driver. Recorder i is $RECORDERS_ROOT/<i>/device.txt.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NATIVE = Path(__file__).resolve().parent / "native"
PASSWORD = "654321"
PASSWORDS = ["000000", "123456", PASSWORD]
PACKED: dict[str, Any] = {
    "layout": "89",
    "return_type": "bool",
    "status_type": "uint16",
    "functions": {"UnInit_Device": "bool Uninit_Device(char *IDCode, unsigned short *iRet)"},
}
BUILDS = {
    "packed": ("packed_bool.c", []),
    "packed_in": ("packed_bool.c", ["-DINPUT_IDCODE", "-DPWD_CONNECT_FAILED"]),
    "falcon": ("falcon.c", []),
    "falcon_single": ("falcon.c", ["-DNO_INDEX"]),
}


def recorder(i: int) -> dict[str, Any]:
    return {
        "id_code": "ZFY01",
        "serial": f"B10000{i}",
        "officer_no": f"10000{i}",
        "officer_name": "张三" if i % 2 else "李四",
        "unit_no": "110101",
        "unit_name": "城关派出所",
        "password": PASSWORD,
        "battery": 60 + i,
        "clock_offset_s": -42,
        "msdc": 0,
    }


def build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every build of BUILDS, compiled in parallel; skips the test without a compiler."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc is not None, "no C compiler: ./dev installs gcc"
    out = tmp_path_factory.mktemp("vendor-emu")
    out.chmod(0o755)
    built = {}
    procs = []
    for name, (source, flags) in BUILDS.items():
        target = out / f"lib{name}.so"
        cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", *flags, "-o", str(target)]
        procs.append((cmd, subprocess.Popen([*cmd, str(NATIVE / source)], stderr=subprocess.PIPE)))
        built[name] = target
    for cmd, proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{cmd}: {err.decode()}"
    return built


def put(root: Path, index: int = 0, **fields: Any) -> Path:
    values = {**recorder(index), **fields}
    folder = root / str(index)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{k}=".encode() + str(v).encode("gbk") + b"\n" for k, v in values.items()]
    (folder / "device.txt").write_bytes(b"".join(lines))
    return folder


def get(root: Path, index: int = 0) -> dict[str, bytes]:
    out = {}
    for line in (root / str(index) / "device.txt").read_bytes().splitlines():
        k, _, v = line.partition(b"=")
        out[k.decode()] = v
    return out
