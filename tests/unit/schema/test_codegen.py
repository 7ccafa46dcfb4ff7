"""The schema's tooling: buf lint is clean and gen/ matches what proto/ generates."""

from __future__ import annotations

import filecmp
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
BUF = pathlib.Path(sys.executable).with_name("buf")


def test_buf_lint_is_clean() -> None:
    result = subprocess.run([BUF, "lint"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gen_is_in_sync_with_proto(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gen"
    result = subprocess.run(
        [BUF, "generate", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    comparison = filecmp.dircmp(out, ROOT / "gen", ignore=["__pycache__"])
    differences: list[str] = []

    def collect(node: filecmp.dircmp[str], prefix: str) -> None:
        differences.extend(f"{prefix}{name}: missing in gen/" for name in node.left_only)
        differences.extend(f"{prefix}{name}: not generated" for name in node.right_only)
        for name in node.common_files:
            if (pathlib.Path(node.left) / name).read_bytes() != (
                pathlib.Path(node.right) / name
            ).read_bytes():
                differences.append(f"{prefix}{name}: differs")
        for name, sub in node.subdirs.items():
            collect(sub, f"{prefix}{name}/")

    collect(comparison, "gen/")
    assert not differences, "gen/ is out of date; run scripts/generate:\n" + "\n".join(differences)
    shutil.rmtree(out)


def test_generated_stubs_import_from_the_installed_package() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from llmmesh.v1 import scheduler_service_pb2_grpc as s;"
            " print(s.SchedulerServiceStub.__name__)",
        ],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.strip() == "SchedulerServiceStub", result.stderr
