"""`lawn-monitor sweep --launcher slurm`: the Slurm launcher's code path (one job array, each
array task one run, through submitit) run by submitit's local executor, which starts each array
task as a process on this machine instead of asking sbatch."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("submitit")

from lawn_monitor import RunStore  # noqa: E402
from lawn_monitor_trainers.launch import minutes  # noqa: E402
from lawn_monitor_trainers.sweep import main as sweep_main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_run_sweep_through_the_slurm_launcher(tmp_path, capsys):
    root, logs = tmp_path / "runs", tmp_path / "slurm-logs"
    argv = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--no-curvature", "--lawn", "off"]
    argv += ["--root", str(root), "--launcher", "slurm", "--slurm-cluster", "local", "--slurm-folder", str(logs)]
    argv += ["--slurm-time", "0:10:00", "--cpus-per-run", "1"]
    assert sweep_main(argv) == 0
    out = capsys.readouterr().out
    runs = RunStore(root).runs().set_index("name")
    assert sorted(runs.index) == ["adam-b64-s0", "sgd-b64-s0"] and (runs["status"] == "finished").all(), out
    assert "job array" in out and out.count(": finished on ") == 2, out
    pids = {int(line.split("(pid ")[1].split(")")[0]) for line in out.splitlines() if "(pid " in line}
    assert len(pids) == 2, out  # each array task its own process
    assert any(logs.rglob("*_log.out")), "submitit keeps each task's log"
    # Launched again, both have ended: nothing is submitted.
    assert sweep_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("finished already") == 2 and "job array" not in out, out


def test_time_limits_and_bad_options_are_one_line_errors(tmp_path, capsys):
    assert [minutes(t) for t in ("90", "1:30:00", "2-00:00:00", 45)] == [90, 90, 2880, 45]
    with pytest.raises(ValueError, match="H:MM:SS"):
        minutes("an hour")
    base = ["--dataset", "digits", "--model", "mlp", "--root", str(tmp_path), "--launcher", "slurm"]
    for extra, message in (
        (["--slurm-time", "soon"], "--slurm-time"),
        (["--slurm-option", "account"], "KEY=VALUE"),
        (["--cpus-per-run", "0"], "--cpus-per-run"),
    ):
        assert sweep_main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_core_and_local_launcher_never_import_ray_or_submitit(tmp_path):
    """With ray and submitit uninstalled (blocked), the core, the sweep and its local launcher
    import and run; asking for ray or slurm says which extra to install, in one line."""
    script = f"""
import sys
for name in ("ray", "submitit"):
    sys.modules[name] = None  # `import name` now fails as if it were not installed
import lawn_monitor, trainers.sweep, trainers.launch, trainers.launch.local, trainers.launch.common
from lawn_monitor_trainers.sweep import main
code = main(["--dataset", "digits", "--model", "mlp", "--launcher", "ray", "--root", {str(tmp_path)!r}])
print(code, sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("ray", "submitit")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "2 []", out.stdout
    assert "pip install 'lawn-monitor[ray]'" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_resources_come_from_flags_else_the_recipes_cluster_table(tmp_path):
    from lawn_monitor_trainers.launch import Resources, resources
    from lawn_monitor_trainers.recipe import config_from
    from lawn_monitor_trainers.sweep import build_parser

    recipe = tmp_path / "big.toml"
    recipe.write_text('dataset = "digits"\nmodel = "mlp"\n[cluster]\ngpus = 2\ncpus = 8\ntime = "2:00:00"\n')
    cfg = config_from({}, str(recipe))
    assert resources([cfg], build_parser().parse_args([]))[0] == Resources(2, 8, 120, None)
    flags = build_parser().parse_args(["--gpus-per-run", "1", "--slurm-partition", "gpu", "--slurm-time", "30"])
    assert resources([cfg], flags)[0] == Resources(1, 8, 30, "gpu")
    recipe.write_text('dataset = "digits"\n[cluster]\ngpu = 2\n')
    with pytest.raises(ValueError, match=r"\[cluster\] gpu"):
        resources([config_from({}, str(recipe))], build_parser().parse_args([]))
