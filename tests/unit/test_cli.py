"""The command line as an operator runs it: exit codes and output of check-config, run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).with_name("configs")
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "l3hostd.example.yaml"


def l3hostd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "l3hostd.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_check_config_ok() -> None:
    proc = l3hostd("check-config", "--config", str(EXAMPLE))
    assert (proc.returncode, proc.stdout.strip()) == (0, "OK")


def test_check_config_every_bad_config_exits_2_naming_the_yaml_path() -> None:
    bad = sorted((CONFIGS / "bad").glob("*.yaml"))
    assert len(bad) >= 12
    for path in bad:
        proc = l3hostd("check-config", "--config", str(path))
        assert proc.returncode == 2, path
        expected = (path.with_suffix(".err")).read_text().replace("{file}", str(path)).strip()
        assert proc.stdout.strip() == expected, path


def test_run_with_a_bad_config_exits_2_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("node: {name: hv1, router_id: 10.0.0.1, asn: 65501}\nbgp: {hold_time: 2}\n")
    proc = l3hostd("run", "--config", str(path))
    assert proc.returncode == 2
    assert "bgp.hold_time" in proc.stderr
