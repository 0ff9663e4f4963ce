"""The layout rules of docs/architecture.md: one home per concept, dependencies one way, no private transformers
internals where a public API exists."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CHECKER = ROOT.parent / "shared" / "tools" / "structure_check.py"


@pytest.mark.skipif(not CHECKER.is_file(), reason="the structure checker lives in ../shared/tools")
def test_no_kind_branches_no_two_way_imports_no_long_files():
    result = subprocess.run([sys.executable, str(CHECKER), str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_private_transformers_hooks_without_a_reason():
    for path in (ROOT / "hf_multitask").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert "_upload_modified_files" not in line, f"{path}:{number}"
            if "._memory_tracker" in line:
                assert "no public API" in line, f"{path}:{number}: say why a private hook is used"


def test_only_the_kinds_import_the_head_classes():
    users = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hf_multitask").rglob("*.py")
             if "from ..heads import" in p.read_text() or "from .heads import" in p.read_text()}
    assert users and all(user.startswith("hf_multitask/kinds/") for user in users), users
