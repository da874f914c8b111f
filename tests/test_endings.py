"""How a monitored run ends when things go wrong: divergence with curvature on, a full disk, a
program that exits without close(), and names (run ids, recipes) that would reach outside their
folders. Every ending is written to run.json with its reason, and what was flushed stays readable."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lawn_monitor import Monitor, RunStore
from lawn_monitor import monitor as monitor_module
from lawn_monitor.monitor import MonitorWriteError
from lawn_monitor.probes import Clock, CurvatureProbe, StepContext
from lawn_monitor.sink import ParquetSink, new_run_id
from lawn_monitor.storage import Location, check_run_id
from lawn_monitor_trainers.config import ConfigError
from lawn_monitor_trainers.recipe import RECIPE_DIR, load_recipe
from tests.helpers import TINY_PROBES, run_cli, tiny_mlp

PROJECT = Path(__file__).resolve().parent.parent


def tiny():
    model = tiny_mlp()
    return model, torch.randn(32, 8), torch.randint(0, 4, (32,))


def info(monitor) -> dict:
    return json.loads((monitor.run_dir / "run.json").read_text())


# --- divergence -------------------------------------------------------------------------------


def test_divergence_with_curvature_on_is_recorded_and_stops_the_probes(tmp_path):
    """A bare loop whose logits turn inf at step 8 goes on to the end without an exception; the
    run ends ``diverged`` with every row on disk, and the curvature probes stop at the divergence."""
    model, x, y = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(
        model, opt, root=tmp_path, total_steps=20, flush_every=1, probe_batch=(x, y), probe_config=TINY_PROBES
    )
    for step in range(1, 21):
        if step == 8:
            with torch.no_grad():
                model[2].weight.fill_(math.inf)
        opt.zero_grad()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        monitor.step(loss=loss.detach(), logits=logits.detach(), targets=y)
    assert monitor.diverged
    monitor.close()
    assert info(monitor)["status"] == "diverged"
    store = RunStore(tmp_path)
    loss = store.series(monitor.run_id, "train/loss", points=None)
    assert loss["step"].tolist() == list(range(1, 21))
    assert loss.set_index("step")["value"].loc[8:].isna().all()  # NaN kept, not dropped
    gn = store.series(monitor.run_id, "gn_trace", points=None)
    assert len(gn) >= 3 and gn["step"].max() <= 8  # 10 points planned over 20 steps: none after 8
    assert all(p.stopped for p in monitor.probes if p.expensive)


class SampledLabels(CurvatureProbe):
    """A probe that raises on a NaN softmax, as sampling labels from it does."""

    def units(self):
        return 1.0

    def compute(self, ctx):
        with torch.no_grad():
            probs = self.model(self.inputs).softmax(dim=-1)
        return [("sampled", "")], torch.multinomial(probs, 1).float().mean().reshape(1)


def test_a_probe_that_raises_on_a_diverged_network_stops_instead(tmp_path):
    model, x, y = tiny()
    probe = SampledLabels(x, y)
    probe.attach(model, None)
    assert probe.run(StepContext(step=1)) is not None
    with torch.no_grad():
        model[0].weight.fill_(math.nan)
    with pytest.warns(UserWarning, match="weights are not finite"):
        assert probe.run(StepContext(step=2)) is None  # no exception, no row
    assert probe.stopped and not probe.due(Clock(step=3, train_seconds=1.0))
    assert probe.state_dict()["stopped"] == probe.stopped  # a resumed run does not start it again

    def bug(ctx):
        raise RuntimeError("a bug")

    model, x, y = tiny()  # finite weights: the same kind of error is a bug, and raised
    fresh = SampledLabels(x, y)
    fresh.attach(model, None)
    fresh.compute = bug
    with pytest.raises(RuntimeError, match="a bug"):
        fresh.run(StepContext(step=1))


@pytest.mark.slow
def test_lawn_monitor_train_exits_3_on_divergence_with_curvature_on(tmp_path, capsys):
    rc, out, err = run_cli(
        [
            "train",
            "--dataset",
            "digits",
            "--model",
            "cnn",
            "--epochs",
            "1",
            "--optimizer",
            "sgd",
            "--lr",
            "1e6",
            "--root",
            str(tmp_path),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 3 and out.startswith("diverged:"), (out, err)
    run = RunStore(tmp_path).runs().iloc[0]
    assert run["status"] == "diverged" and run["probes"]["curvature"]
    assert len(RunStore(tmp_path).series(run["run_id"], "train/loss")) > 0


# --- a full disk ------------------------------------------------------------------------------


def fill_disk_after(monkeypatch, monitor_ref: list, step: int, run_json_too: bool = False) -> None:
    """Writes to metrics/ (and to run.json if asked) fail with ENOSPC once the Monitor is past ``step``."""
    real = Location.write_atomic

    def write(self, rel, data, durable=True):
        if monitor_ref and monitor_ref[0].step_count > step and ("/metrics/" in rel or run_json_too):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, rel, data, durable)

    monkeypatch.setattr(Location, "write_atomic", write)


def test_a_full_disk_ends_the_run_failed_with_its_earlier_rows(tmp_path, monkeypatch):
    ref: list = []
    fill_disk_after(monkeypatch, ref, step=6)
    monitor = Monitor(nn.Linear(2, 2), root=tmp_path, flush_every=3)
    ref.append(monitor)
    with pytest.raises(MonitorWriteError) as caught:
        for _ in range(20):
            monitor.step(loss=torch.tensor(1.0))
    error = caught.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert "No space left on device" in str(error) and "rows through step 6" in str(error)
    assert len(str(error).splitlines()) == 1
    written = info(monitor)
    assert written["status"] == "failed" and written["step"] == 6
    assert "No space left on device" in written["error"] and "\n" not in written["error"]
    assert RunStore(tmp_path).series(monitor.run_id, "train/loss")["step"].tolist() == [1, 2, 3, 4, 5, 6]
    monitor.close()  # already ended: a no-op, the reason stays
    assert info(monitor)["error"] == written["error"]


def test_a_full_disk_that_takes_run_json_too_still_raises_one_clear_error(tmp_path, monkeypatch):
    ref: list = []
    fill_disk_after(monkeypatch, ref, step=3, run_json_too=True)
    with pytest.raises(MonitorWriteError, match="status could not be written either"):
        with Monitor(nn.Linear(2, 2), root=tmp_path, flush_every=3) as monitor:
            ref.append(monitor)
            for _ in range(20):
                monitor.step(loss=torch.tensor(1.0))
    assert info(monitor)["status"] == "running"  # nothing could be written: it shows as stale later
    assert RunStore(tmp_path).series(monitor.run_id, "train/loss")["step"].tolist() == [1, 2, 3]


def test_an_error_in_the_with_block_is_not_hidden_by_a_full_disk(tmp_path, monkeypatch):
    ref: list = []
    fill_disk_after(monkeypatch, ref, step=1)
    with pytest.raises(ValueError, match="the loop's own"), pytest.warns(UserWarning, match="No space left"):
        with Monitor(nn.Linear(2, 2), root=tmp_path, flush_every=100) as monitor:
            ref.append(monitor)
            monitor.step(loss=torch.tensor(1.0))
            monitor.step(loss=torch.tensor(1.0))
            raise ValueError("the loop's own")
    assert info(monitor)["status"] == "failed"


# --- a program that exits without close() ------------------------------------------------------

PROGRAM = """
import sys, torch
from lawn_monitor import Monitor
monitor = Monitor(torch.nn.Linear(2, 2), root=sys.argv[1], run_id="bare", flush_secs=1e9)
for step in range(7):
    monitor.step(loss=torch.tensor(float(step)))
if sys.argv[2] == "raise":
    raise RuntimeError("the loop broke")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "ending, status, words",
    [("exit", "interrupted", "without Monitor.close()"), ("raise", "failed", "RuntimeError: the loop broke")],
)
def test_a_program_that_exits_without_close_records_how(tmp_path, ending, status, words):
    """Every row was still buffered (flush_secs is huge): the exit hook writes them and the status."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM), str(tmp_path), ending],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode == 0) == (ending == "exit"), proc.stderr
    written = json.loads((tmp_path / "bare" / "run.json").read_text())
    assert written["status"] == status and words in written["error"] and written["ended_at"]
    assert RunStore(tmp_path).series("bare", "train/loss")["step"].tolist() == list(range(1, 8))


@pytest.mark.parametrize("last, status", [(None, "diverged"), (KeyboardInterrupt(), "interrupted")])
def test_the_exit_hook_flushes_first_and_reads_how_the_program_ended(tmp_path, monkeypatch, last, status):
    """The hook itself, in this process (the subprocess test shows it runs at exit)."""
    monkeypatch.setattr(sys, "last_value", last, raising=False)
    monitor = Monitor(nn.Linear(2, 2), root=tmp_path, flush_secs=1e9)
    monitor.step(loss=torch.tensor(1.0))
    monitor.step(loss=torch.tensor(math.nan))  # still buffered: the hook's flush finds it
    monitor_module._close_at_exit()
    assert info(monitor)["status"] == status and monitor.closed
    assert len(RunStore(tmp_path).series(monitor.run_id, "train/loss")) == 2


# --- names that would reach outside their folders ---------------------------------------------


@pytest.mark.parametrize("run_id", ["../x", "a/b", "..", ".hidden", "", "x" * 129, "a..b", "-x", "a\\b", 5])
def test_run_ids_that_are_not_one_plain_folder_are_refused(tmp_path, run_id):
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="is not allowed"):
        Monitor(nn.Linear(2, 2), root=root, run_id=run_id)
    with pytest.raises(ValueError, match="is not allowed"):
        ParquetSink(root, run_id, {})
    assert not any(tmp_path.iterdir())  # nothing written, inside the root or outside


def test_generated_run_ids_are_allowed():
    for name in ("adam-lawn", "../../etc", "a..b", "..", "my run (copy)", "ünïcode", ""):
        assert check_run_id(new_run_id(name))


def test_resume_of_a_run_id_outside_the_root_is_a_one_line_error(tmp_path, capsys):
    rc, out, err = run_cli(["train", "--resume", "../x", "--root", str(tmp_path)], capsys)
    assert rc == 2 and "--resume: run id '../x' is not allowed" in err and len(err.strip().splitlines()) == 1


def test_recipes_resolve_inside_their_folder_or_as_an_explicit_toml_path(tmp_path, capsys):
    outside = tmp_path / "mine.toml"
    outside.write_text('dataset = "digits"\nmodel = "mlp"\nepochs = 1\n')
    assert load_recipe(str(outside))["model"] == "mlp"  # your own file, by its path
    # A name never leaves trainers/recipes/: this one once named tmp_path/mine.toml through "..".
    escape = os.path.relpath(tmp_path / "mine", RECIPE_DIR)
    for name in (escape, str(tmp_path / "mine"), "../x", "..", ".hidden", "x/../y"):
        with pytest.raises(ConfigError) as caught:
            load_recipe(name)
        assert str(RECIPE_DIR) in str(caught.value)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'dataset = "digits"\n# caf\xe9\n')
    rc, out, err = run_cli(["train", "--recipe", str(bad), "--root", str(tmp_path / "runs")], capsys)
    assert rc == 2 and "is not UTF-8 text" in err and "Traceback" not in err
    rc, out, err = run_cli(["train", "--recipe", "../x", "--root", str(tmp_path / "runs")], capsys)
    assert rc == 2 and "not an existing .toml file" in err and len(err.strip().splitlines()) == 1


def test_compare_by_nothing_or_an_unknown_key(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in (0, 1):
            with Monitor(nn.Linear(2, 2), root=tmp_path, config={"optimizer": "adam", "seed": seed}) as monitor:
                monitor.step(loss=torch.tensor(1.0))
                monitor.log_eval(acc=0.5 + seed / 10)
    rc, out, err = run_cli(["compare", "--by", ",", "--root", str(tmp_path)], capsys)
    assert rc == 0 and out.splitlines()[1].split()[:2] == ["0.55", "0.070711"]  # one group, both seeds
    rc, out, err = run_cli(["compare", "--by", "optimizer,nokey", "--root", str(tmp_path)], capsys)
    assert rc == 0 and "no finished run has config key 'nokey': --by takes optimizer, seed" in out


def test_lawn_monitor_train_on_a_full_disk_is_one_line_and_failed(tmp_path, monkeypatch, capsys):
    real = Location.write_atomic

    def write(self, rel, data, durable=True):
        if "/metrics/" in rel:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, rel, data, durable)

    monkeypatch.setattr(Location, "write_atomic", write)
    rc, out, err = run_cli(
        [
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--no-curvature",
            "--root",
            str(tmp_path),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "No space left on device" in err, err
    run = RunStore(tmp_path).runs().iloc[0]
    assert run["status"] == "failed"
