"""ray_configs/: the cluster YAMLs pass Ray's own schema, the runtime environment is one
Ray accepts, and the job-submission script is valid shell naming real bbopt commands."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parent.parent / "ray_configs"


@pytest.mark.parametrize("name", ["cluster-local.yaml", "cluster-aws-gpu.yaml"])
def test_cluster_yaml_passes_rays_schema(name: str):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CONFIGS / name).read_text())
    validate_config(prepare_config(config))  # raises on a bad config


def test_gpu_cluster_has_gpu_workers():
    config = yaml.safe_load((CONFIGS / "cluster-aws-gpu.yaml").read_text())
    workers = [t for n, t in config["available_node_types"].items()
               if n != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in workers)


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**yaml.safe_load((CONFIGS / "runtime_env.yaml").read_text()))
    assert "-e ." in env["pip"]["packages"]


def test_submit_examples_name_real_commands():
    script = CONFIGS / "submit_examples.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    from click.testing import CliRunner

    from bbopt.cli import main

    commands = re.findall(r"--\s*\\?\s*\n?\s*bbopt ([a-z-]+(?: [a-z0-9]+)?)", script.read_text())
    assert len(commands) >= 3
    for command in commands:
        result = CliRunner().invoke(main, [*command.split(), "--help"])
        assert result.exit_code == 0, (command, result.output)
    assert (CONFIGS / "tune_mlp.py").exists()
