"""TensorBoard import and export: event files written by torch's SummaryWriter go into the store
and come back out with the same tags, steps, values and wall times."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("tbparse")
from tbparse import SummaryReader  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from lawn_monitor.cli import main  # noqa: E402
from lawn_monitor.integrations.tensorboard import project_name, tag_names  # noqa: E402
from lawn_monitor.schema import SCHEMA  # noqa: E402
from lawn_monitor.sink import ParquetSink  # noqa: E402
from lawn_monitor.store import RunStore  # noqa: E402

STEPS = 50
T0 = 1_700_000_000.0
# tag -> the metric it becomes in the store (layer "" unless a per-layer metric).
TAGS = {
    "Loss/train": "train/loss",
    "test/acc": "test/acc",
    "lr": "lr",
    "epoch": "epoch",
    "custom/thing": "custom/thing",
}


def value(tag: str, step: int) -> float:
    return {
        "Loss/train": 2.0 / step,
        "test/acc": 0.5 + step / 200,
        "lr": 0.1 * 0.97**step,
        "epoch": step // 10,
        "custom/thing": math.sin(step),
    }[tag]


def write_logdir(run_dir: Path, steps: range = range(1, STEPS + 1)) -> None:
    """One TensorBoard run as torch writes it: a few tags, explicit wall times."""
    writer = SummaryWriter(log_dir=str(run_dir))
    for step in steps:
        for i, tag in enumerate(TAGS):
            writer.add_scalar(tag, value(tag, step), step, walltime=T0 + step + i / 10)
    writer.close()


def read_back(log_dir: Path) -> pd.DataFrame:
    """Every scalar under log_dir, as tbparse reads it."""
    with warnings.catch_warnings():  # tbparse's own use of pandas
        warnings.simplefilter("ignore", DeprecationWarning)
        return SummaryReader(str(log_dir), extra_columns={"wall_time", "dir_name"}).scalars


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_round_trip_import_then_export(tmp_path, capsys):
    logdir, root, out = tmp_path / "tb", tmp_path / "runs", tmp_path / "export"
    write_logdir(logdir / "adam")
    original = read_back(logdir)

    code, stdout, _ = run(capsys, "import", "tensorboard", str(logdir), "--root", str(root))
    assert code == 0 and "imported" in stdout
    store = RunStore(root)
    runs = store.runs()
    assert len(runs) == 1
    info = runs.iloc[0]
    assert (info["status"], info["name"], info["source"]) == ("finished", "adam", "tensorboard")
    assert info["run_dir"] == "adam" and Path(info["logdir"]) == logdir.resolve()
    run_id = info["run_id"]
    assert set(store.metrics(run_id)) == set(TAGS.values())

    for tag, metric in TAGS.items():
        series = store.series(run_id, metric, points=None)
        expected = original[original["tag"] == tag].sort_values("step")
        assert series["step"].tolist() == list(range(1, STEPS + 1))
        np.testing.assert_allclose(series["value"], expected["value"], rtol=1e-6)  # float32 in the event file
        np.testing.assert_allclose(series["wall_time"], expected["wall_time"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(series["epoch"], [s // 10 for s in range(1, STEPS + 1)])  # from the epoch tag
    run_json = json.loads((root / run_id / "run.json").read_text())
    assert run_json["created_at"].startswith("2023-11-14T22:13:21")  # the first event, not the import
    assert run_json["step"] == run_json["total_steps"] == STEPS

    code, stdout, _ = run(capsys, "export", "--to", "tensorboard", str(out), "--root", str(root))
    assert code == 0 and f"exported {run_id}" in stdout
    exported = read_back(out)
    assert set(exported["dir_name"]) == {run_id}
    key = ["tag", "step"]  # each tag under its own name again ("Loss/train", not "train/loss")
    a, b = original.sort_values(key, ignore_index=True), exported.sort_values(key, ignore_index=True)
    assert a[key].equals(b[key])
    np.testing.assert_array_equal(a["value"], b["value"])  # float32 -> float64 -> float32 is exact
    np.testing.assert_allclose(a["wall_time"], b["wall_time"], rtol=0, atol=1e-6)


def test_second_import_skips_and_force_replaces(tmp_path, capsys):
    logdir, root = tmp_path / "tb", tmp_path / "runs"
    write_logdir(logdir, range(1, 11))  # event files straight in LOGDIR: the run is named after it
    assert run(capsys, "import", "tensorboard", str(logdir), "--root", str(root))[0] == 0
    [run_id] = RunStore(root).run_ids()
    assert RunStore(root).runs().loc[0, "name"] == "tb"

    code, stdout, _ = run(capsys, "import", "tensorboard", str(logdir), "--root", str(root))
    assert code == 0 and stdout.strip() == f"skipped {logdir}: already imported as {run_id}"
    assert RunStore(root).run_ids() == [run_id]

    write_logdir(logdir, range(11, 21))  # training went on: a second event file
    code, stdout, _ = run(capsys, "import", "tensorboard", str(logdir), "--root", str(root))
    assert code == 1 and "--force replaces it" in stdout
    assert RunStore(root).series(run_id, "train/loss", points=None)["step"].max() == 10

    code, stdout, _ = run(
        capsys, "import", "tensorboard", str(logdir), "--root", str(root), "--force", "--name", "adam-1"
    )
    assert code == 0 and stdout.startswith("replaced")
    store = RunStore(root)
    assert store.run_ids() == [run_id] and store.runs().loc[0, "name"] == "adam-1"
    assert store.series(run_id, "train/loss", points=None)["step"].tolist() == list(range(1, 21))


def test_an_import_that_died_is_replaced(tmp_path, capsys):
    logdir, root = tmp_path / "tb", tmp_path / "runs"
    write_logdir(logdir / "a", range(1, 6))
    run(capsys, "import", "tensorboard", str(logdir), "--root", str(root))
    [run_id] = RunStore(root).run_ids()
    path = root / run_id / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "running"}))
    code, stdout, _ = run(capsys, "import", "tensorboard", str(logdir), "--root", str(root))
    assert code == 0 and stdout.startswith("replaced")
    store = RunStore(root)
    assert store.runs().loc[0, "status"] == "finished"
    assert len(store.series(run_id, "lr", points=None)) == 5  # not twice


def test_bad_logdirs_say_what_to_do(tmp_path, capsys):
    root = tmp_path / "runs"
    code, stdout, err = run(capsys, "import", "tensorboard", str(tmp_path / "missing"), "--root", str(root))
    assert code == 2 and err.count("\n") == 1 and "is not a folder" in err

    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "import", "tensorboard", str(tmp_path / "empty"), "--root", str(root))
    assert code == 2 and err.count("\n") == 1 and "no TensorBoard event files" in err and "--logdir" in err

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "events.out.tfevents.1.host").write_bytes(b"not an event file")
    code, _, err = run(capsys, "import", "tensorboard", str(tmp_path / "junk"), "--root", str(root))
    assert code == 2 and err.count("\n") == 1 and "no readable scalars" in err
    assert RunStore(root).run_ids() == []

    code, _, err = run(capsys, "import", "wandb", str(tmp_path), "--root", str(root))
    assert code == 2 and err.count("\n") == 1


def test_export_errors_and_second_export(tmp_path, capsys):
    root, out = tmp_path / "runs", tmp_path / "export"
    code, _, err = run(capsys, "export", "--to", "tensorboard", str(out), "--root", str(root))
    assert code == 2 and err.count("\n") == 1 and "no runs" in err
    write_logdir(tmp_path / "tb", range(1, 4))
    run(capsys, "import", "tensorboard", str(tmp_path / "tb"), "--root", str(root))
    code, _, err = run(capsys, "export", "--to", "tensorboard", str(out), "--root", str(root), "nope")
    assert code == 2 and err.count("\n") == 1 and "no run 'nope'" in err

    assert run(capsys, "export", "--to", "tensorboard", str(out), "--root", str(root))[0] == 0
    code, stdout, _ = run(capsys, "export", "--to", "tensorboard", str(out), "--root", str(root))
    assert code == 1 and "--force replaces them" in stdout
    assert run(capsys, "export", "--to", "tensorboard", str(out), "--root", str(root), "--force")[0] == 0
    assert len(list(out.rglob("*tfevents*"))) == 1  # replaced, not added to
    assert len(read_back(out)) == 3 * len(TAGS)


def test_store_to_tensorboard_and_back_keeps_layers(tmp_path, capsys):
    """A run written by the Monitor's sink, exported with --layers and imported again: the same
    rows, per-layer values back at their layers."""
    root, out, back = tmp_path / "runs", tmp_path / "export", tmp_path / "back"
    rows = [
        (s, float(s) / 4, T0 + s, layer, metric, v * s)
        for s in range(1, 21)
        for layer, metric, v in [
            ("", "train/loss", 1.0),
            ("", "val/acc", 0.25),
            ("fc.weight", "grad_norm", 0.5),
            ("fc.bias", "grad_norm", 2.0),
            ("", "grad_norm", 3.0),
        ]
    ]
    steps, epochs, walls, layers, metrics, values = zip(*rows)
    table = pa.table(
        {
            "run_id": ["r1"] * len(rows),
            "step": steps,
            "epoch": epochs,
            "wall_time": walls,
            "layer": layers,
            "metric": metrics,
            "value": values,
        },
        schema=SCHEMA,
    )
    sink = ParquetSink(root, "r1", {"name": "r1", "config": {}})
    sink.write(table)
    sink.close("finished")

    assert run(capsys, "export", "--to", "tensorboard", str(out), "--root", str(root), "--layers")[0] == 0
    assert set(read_back(out)["tag"]) == {
        "train/loss",
        "val/acc",
        "grad_norm",
        "grad_norm/fc.weight",
        "grad_norm/fc.bias",
    }
    assert run(capsys, "import", "tensorboard", str(out), "--root", str(back))[0] == 0
    store = RunStore(back)
    [run_id] = store.run_ids()
    got = store.rows(run_id, per_layer=True)
    want = RunStore(root).rows("r1", per_layer=True)
    key = ["metric", "layer", "step"]
    assert got[key].equals(want[key])
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-6)
    assert got["epoch"].isna().all()  # no epoch tag: NaN
    assert store.run_info(run_id)["layers"] == ["fc.bias", "fc.weight"]


def test_tag_mapping():
    assert project_name("loss") == ("train/loss", "")
    assert project_name("Loss/train") == ("train/loss", "")
    assert project_name("train_acc") == ("train/acc", "")
    assert project_name("accuracy/validation") == ("val/acc", "")
    assert project_name("val-loss") == ("val/loss", "")
    assert project_name("eval/accuracy") == ("val/acc", "")  # Hugging Face's evaluation: validation
    assert project_name("eval_loss") == ("val/loss", "")
    assert project_name("val_top5_acc") == ("val/acc5", "")
    assert project_name("train/learning_rate") == ("lr", "")
    assert project_name("lr-Adam") == ("lr", "")
    assert project_name("lr-Adam/pg1") == ("lr-Adam/pg1", "")
    assert project_name("update_ratio/features.0.weight") == ("update_ratio", "features.0.weight")
    assert project_name("train_loss_step") == ("train_loss_step", "")
    assert project_name("test/loss") == ("test/loss", "")
    # Two tags that would become one name keep their own.
    assert tag_names(["loss", "train/loss", "val_loss"]) == {
        "loss": ("loss", ""),
        "train/loss": ("train/loss", ""),
        "val_loss": ("val/loss", ""),
    }
    assert tag_names(["lr-Adam", "lr-SGD"]) == {"lr-Adam": ("lr-Adam", ""), "lr-SGD": ("lr-SGD", "")}


def test_new_style_scalars_and_several_runs(tmp_path, capsys):
    """Scalars written as tensors (new_style, as TF2 writes them) import too; each folder with
    event files is one run, named by --name and its folder."""
    logdir, root = tmp_path / "tb", tmp_path / "runs"
    for name in ("sgd", "adam/seed0"):
        writer = SummaryWriter(log_dir=str(logdir / name))
        for step in range(1, 6):
            writer.add_scalar("val_acc", step / 10, step, walltime=T0 + step, new_style=True)
        writer.close()
    code, stdout, _ = run(capsys, "import", "tensorboard", str(logdir), "--root", str(root), "--name", "exp")
    assert code == 0 and stdout.count("imported") == 2
    store = RunStore(root)
    assert sorted(store.runs()["name"]) == ["exp/adam/seed0", "exp/sgd"]
    for run_id in store.run_ids():
        np.testing.assert_allclose(
            store.series(run_id, "val/acc", points=None)["value"], [s / 10 for s in range(1, 6)], rtol=1e-6
        )


def test_round_trip_keeps_hugging_face_tags_and_every_value_at_one_step(tmp_path, capsys):
    """What the Trainer's TensorBoard logger writes (train/learning_rate, eval/loss), and one tag
    written 10 times at one step: in the store under the naming rule (lr, val/loss), and back out
    under the tags it came with, 10 values for 10."""
    logdir, root, out = tmp_path / "tb", tmp_path / "runs", tmp_path / "export"
    writer = SummaryWriter(log_dir=str(logdir / "hf"))
    for step in (1, 2):
        writer.add_scalar("train/learning_rate", 0.1 / step, step, walltime=T0 + step)
        writer.add_scalar("train/loss", 1.0 / step, step, walltime=T0 + step)
        writer.add_scalar("eval/loss", 2.0 / step, step, walltime=T0 + step)
    for i in range(10):
        writer.add_scalar("train/epoch_stat", float(i), 3, walltime=T0 + 3 + i / 100)
    writer.close()
    original = read_back(logdir)
    assert run(capsys, "import", "tensorboard", str(logdir), "--root", str(root))[0] == 0
    store = RunStore(root)
    [run_id] = store.run_ids()
    assert set(store.metrics(run_id)) == {"lr", "train/loss", "val/loss", "train/epoch_stat"}
    assert store.series(run_id, "val/loss", points=None)["value"].tolist() == [2.0, 1.0]
    assert run(capsys, "export", "--to", "tensorboard", str(out), "--root", str(root))[0] == 0
    exported = read_back(out)
    assert sorted(set(exported["tag"])) == sorted(set(original["tag"]))
    assert len(exported) == len(original) == 16
    repeated = exported[exported["tag"] == "train/epoch_stat"].sort_values("wall_time")
    assert repeated["step"].tolist() == [3] * 10 and repeated["value"].tolist() == [float(i) for i in range(10)]
