"""Kill a training process after a checkpoint, resume it, and compare it with an uninterrupted run:
no (step, layer, metric) twice, none missing, the same values and the same final weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lawn_monitor import RunStore
from lawn_monitor.probes import ProbeConfig
from lawn_monitor.schema import SCHEMA
from lawn_monitor.sink import ParquetSink
from lawn_monitor_trainers.config import TrainConfig, config_from_flags
from lawn_monitor_trainers.train import CHECKPOINT, train

REPO = Path(__file__).resolve().parents[1]
# Digits, MLP, Adam-LAWN switching after epoch 2; the kill comes after epoch 3's checkpoint, so
# the resumed run must restore LAWN's targets, the optimizer, the schedule and the data order.
ARGS = dict(
    dataset="digits",
    model="mlp",
    optimizer="adam",
    lawn=True,
    free_epochs=2.0,
    epochs=12,
    batch_size=64,
    seed=1,
    curvature=False,
    flush_secs=0.02,
    progress=False,
)
STEPS_PER_EPOCH = 21  # 1,293 training digits / 64 (the validation split holds 144 of the 1,437 out)


def rows(store: RunStore, run_id: str):
    return duckdb.sql(f"SELECT step, layer, metric, value FROM read_parquet({store.files([run_id])!r})").df()


def past_a_checkpoint(store: RunStore, run: Path) -> bool:
    """A checkpoint of epoch 3 or later is there, and rows written after it."""
    if not (run / CHECKPOINT).exists():
        return False
    checkpoint = torch.load(run / CHECKPOINT, weights_only=False)
    return checkpoint["epoch"] >= 3 and bool(rows(store, run.name)["step"].max() > checkpoint["step"])


@pytest.mark.slow
def test_killed_run_resumes_without_duplicate_or_missing_rows(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this process trains too: no oversubscription beside the child
    try:
        check_kill_and_resume(tmp_path)
    finally:
        torch.set_num_threads(threads)


def check_kill_and_resume(tmp_path):
    store = RunStore(tmp_path / "runs")
    flags = [
        f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
        for k, v in ARGS.items()
        if v is not False
    ]
    flags = [f for f in flags if f not in ("--curvature", "--progress")] + ["--no-curvature", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lawn_monitor_trainers.train", *flags, "--root", str(store.root)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        run_json = None
        while time.monotonic() < deadline:  # past epoch 3's checkpoint, with rows written after it
            found = list(store.root.glob("*/run.json")) if store.root.exists() else []
            if found:
                run_json = found[0]
                try:
                    if json.loads(run_json.read_text()).get("step", 0) >= 3 * STEPS_PER_EPOCH + 5:
                        # Frozen, the state cannot change between this look and the kill: a
                        # checkpoint must be there, and rows after it for the resume to drop.
                        proc.send_signal(signal.SIGSTOP)
                        if past_a_checkpoint(store, run_json.parent):
                            break
                        proc.send_signal(signal.SIGCONT)
                except ValueError:
                    pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    killed = run_json.parent.name
    checkpoint = torch.load(run_json.parent / CHECKPOINT, weights_only=False)
    assert checkpoint["epoch"] >= 3
    assert rows(store, killed)["step"].max() > checkpoint["step"]  # rows the resume must drop

    resumed = train(TrainConfig(resume=killed, root=str(store.root), progress=False))
    assert resumed.run_id == killed and resumed.status == "finished"
    info = json.loads(run_json.read_text())
    assert info["status"] == "finished" and info["resumed"][0]["from_step"] == checkpoint["step"]
    whole = train(config_from_flags({**ARGS, "root": str(store.root)}))

    a, b = rows(store, whole.run_id), rows(store, killed)
    keys = ["step", "layer", "metric"]
    assert not b.duplicated(keys).any(), b[b.duplicated(keys, keep=False)].sort_values(keys).head()
    assert len(a) == len(b) and a[keys].drop_duplicates().shape[0] == len(a)
    merged = a.merge(b, on=keys, how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()
    assert merged["step"].max() == 12 * STEPS_PER_EPOCH
    # Same computation on the same CPU, from the same state: the same numbers (timings aside).
    timed = merged["metric"].isin(["step_time", "samples_per_s"])
    torch.testing.assert_close(
        torch.tensor(merged.loc[~timed, "value_x"].to_numpy()),
        torch.tensor(merged.loc[~timed, "value_y"].to_numpy()),
        rtol=1e-6,
        atol=1e-9,
        equal_nan=True,
    )
    final_whole = torch.load(Path(whole.run_dir) / CHECKPOINT, weights_only=False)["model"]
    final_resumed = torch.load(run_json.parent / CHECKPOINT, weights_only=False)["model"]
    for name, tensor in final_whole.items():
        assert torch.equal(tensor, final_resumed[name]), name


def test_resume_refuses_finished_runs_and_changed_flags(tmp_path, capsys):
    from lawn_monitor_trainers.train import main

    root = str(tmp_path)
    result = train(
        TrainConfig(
            dataset="digits", model="mlp", epochs=1, probes=ProbeConfig(curvature=False), progress=False, root=root
        )
    )
    assert main(["--resume", result.run_id, "--root", root]) == 2
    assert "has finished" in capsys.readouterr().err
    assert main(["--resume", result.run_id, "--root", root, "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--lr cannot change when resuming" in err and len(err.strip().splitlines()) == 1
    assert main(["--resume", "no-such-run", "--root", root]) == 2
    assert "no-such-run/checkpoint.pt" in capsys.readouterr().err
    # A run whose process is still alive on this machine (here: a sleeping child) is not resumed.
    run_json = Path(result.run_dir) / "run.json"
    info = json.loads(run_json.read_text())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_json.write_text(json.dumps({**info, "status": "running", "pid": sleeper.pid}))
        assert main(["--resume", result.run_id, "--root", root]) == 2
        assert f"process {sleeper.pid} on this machine is still training it" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reopen_rewrites_every_data_file_without_later_steps(tmp_path):
    def table(steps):
        n = len(steps)
        return pa.table(
            {
                "run_id": ["r"] * n,
                "step": steps,
                "epoch": [0.0] * n,
                "wall_time": [0.0] * n,
                "layer": [""] * n,
                "metric": ["m"] * n,
                "value": [1.0] * n,
            },
            schema=SCHEMA,
        )

    sink = ParquetSink(tmp_path, "r", {"name": "r"}, compact=False)
    sink.write(table([1, 2]))
    sink.write(table([3, 4]))
    metrics = tmp_path / "r" / "metrics"
    pq.write_table(table([1, 2, 3, 4]), metrics / "compact-00000000-00000001-abcdef.parquet")  # both parts merged
    pq.write_table(table([7]), metrics / "from-elsewhere.parquet")  # any name
    (metrics / ".part-00000009-aa.parquet.1234.tmp").write_bytes(b"half a file")  # a killed writer's temp
    sink.close("failed")
    before = {p.name: p.stat().st_mtime_ns for p in metrics.glob("*.parquet")}
    reopened = ParquetSink.reopen(tmp_path, "r", {"name": "r"}, keep_through_step=2, compact=False)
    steps = {p.name: sorted(pq.read_table(p).column("step").to_pylist()) for p in metrics.glob("*.parquet")}
    assert set(steps) == set(before)  # same files, same names: the covering between them holds
    assert steps["compact-00000000-00000001-abcdef.parquet"] == [1, 2]
    assert sorted(sum(steps.values(), [])) == [1, 1, 2, 2]  # the parts, and their merge
    assert steps["from-elsewhere.parquet"] == []
    assert reopened.seq == 2  # numbering continues after the parts already there
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "running" and info["resumed"][0]["from_step"] == 2
    assert RunStore(tmp_path).series("r", "m")["step"].tolist() == [1, 2]  # every step exactly once
