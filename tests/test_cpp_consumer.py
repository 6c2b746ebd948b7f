"""The C++ package: install annforge's CMake project (core library only) into a temporary prefix, build
tests/cpp_consumer against it with find_package(annforge), run it."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSUMER = os.path.join(ROOT, "tests", "cpp_consumer")

pytestmark = pytest.mark.slow


def _run(cmd: List[str], **kw: Any) -> str:
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2"))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}"
    return proc.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "CMakeLists.txt")),
                    reason="needs the source tree (the suite is running against an installed wheel)")
def test_installed_package_builds_and_runs_a_consumer(tmp_path: Any) -> None:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    build, prefix, consumer = tmp_path / "build", tmp_path / "prefix", tmp_path / "consumer"
    _run(["cmake", "-S", ROOT, "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
          "-DANNFORGE_BUILD_PYTHON=OFF", f"-DCMAKE_INSTALL_PREFIX={prefix}"])
    _run(["cmake", "--build", str(build), "--target", "annforge_core"])
    _run(["cmake", "--install", str(build)])
    assert (prefix / "include" / "annforge" / "index" / "flat.h").is_file()
    config = list(prefix.glob("lib*/cmake/annforge/annforgeConfig.cmake"))
    assert config, "annforgeConfig.cmake was not installed"

    _run(["cmake", "-S", CONSUMER, "-B", str(consumer), *generator, "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_PREFIX_PATH={prefix}"])
    _run(["cmake", "--build", str(consumer)])
    exe = consumer / ("consumer.exe" if os.name == "nt" else "consumer")
    out = _run([str(exe), str(tmp_path / "index.af")])
    assert out.strip().endswith("ok")
