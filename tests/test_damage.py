"""A store that reads around damage: bad run.json files, symlink loops, names that are not UTF-8,
foreign Parquet files, renamed run folders. Each is listed or skipped with a warning; the other
runs read as before, through the API, the command line and every dashboard page."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lawn_monitor import RunStore
from lawn_monitor.cli import main as cli_main
from lawn_monitor.runinfo import check_run_info
from tests.helpers import write_run

LOSSES_A, LOSSES_B = [1.0, 0.5, 0.25], [2.0, 1.0]
# run.json damage: (what the file holds, whether the run is then "damaged", words in the reason).
# The rest keep their status: the bad field is read as not recorded.
RUN_JSON = {
    "array": (b"[1, 2]", True, "an array"),
    "string": (b'"finished"', True, "a string"),
    "number": (b"3", True, "a number"),
    "null": (b"null", True, "null"),
    "status-number": ({"status": 7}, True, "status = 7"),
    "status-unknown": ({"status": "exploded"}, True, "status"),
    "config-array": ({"config": [1]}, True, "config = [1]"),
    "heartbeat-number": ({"heartbeat_at": 5}, False, "heartbeat_at = 5"),
    "created-number": ({"created_at": 5}, False, "created_at = 5"),
    "step-text": ({"step": "x"}, False, 'step = "x"'),
    "total-steps-text": ({"total_steps": "x"}, False, "total_steps"),
    "layers-number": ({"layers": 5}, False, "layers = 5"),
    "test-acc-text": ({"test_acc": "x"}, False, "test_acc"),
    "name-number": ({"name": 5}, False, "name = 5"),
    "ended-array": ({"ended_at": [1]}, False, "ended_at"),
    "unparseable": (b"{not json", True, "not JSON"),
    "empty": (b"", True, "empty"),
    "not-utf8": (b'{"name": "caf\xe9"}', True, "not UTF-8"),
    "missing": (None, True, "no run.json"),
}


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> tuple[Path, str, str]:
    """Two finished runs (a: seed 0, b: seed 1) of one experiment."""
    root = tmp_path_factory.mktemp("good")
    a = write_run(root, "a", {"optimizer": "adam", "lawn": False, "batch_size": 64, "seed": 0}, LOSSES_A, accs=[0.5])
    b = write_run(root, "b", {"optimizer": "adam", "lawn": False, "batch_size": 64, "seed": 1}, LOSSES_B, accs=[0.7])
    return root, a, b


def damage_run_json(root: Path, source: str, folder: str, kind: str) -> None:
    """A copy of run ``source`` as ``folder``, its run.json damaged as RUN_JSON[kind] says."""
    shutil.copytree(root / source, root / folder)
    content = RUN_JSON[kind][0]
    path = root / folder / "run.json"
    if content is None:
        path.unlink()
    elif isinstance(content, dict):
        path.write_text(json.dumps({**json.loads(path.read_text()), **content}))
    else:
        path.write_bytes(content)


def copy_store(good_store, tmp_path) -> tuple[Path, str, str]:
    root, a, b = good_store
    shutil.copytree(root, tmp_path / "runs")
    return tmp_path / "runs", a, b


def read_all(store: RunStore):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = store.runs().set_index("run_id")
        series = store.series(list(runs.index), "train/loss")
        layers = {r: store.layers(r, "weight_norm") for r in runs.index}
        summary = store.summary("test/acc", by=["optimizer"])
    return runs, series, layers, summary, [str(w.message) for w in caught]


@pytest.mark.parametrize("kind", list(RUN_JSON))
def test_a_damaged_run_json_is_marked_and_the_rest_read(kind, good_store, tmp_path):
    root, a, b = copy_store(good_store, tmp_path)
    damage_run_json(root, a, "copy-of-a", kind)
    _, damaged, words = RUN_JSON[kind]
    store = RunStore(root)
    runs, series, layers, summary, caught = read_all(store)
    assert set(runs.index) == {a, b, "copy-of-a"}
    for run_id in (a, b):
        assert runs.loc[run_id, "status"] == "finished" and pd.isna(runs.loc[run_id, "damage"])
    victim = runs.loc["copy-of-a"]
    if damaged:
        assert victim["status"] == "damaged" and words in victim["damage"]
    else:  # the field is read as not recorded; the run keeps its status
        assert victim["status"] in ("finished", "stale") and pd.isna(victim["damage"])
    # Its data still reads (by folder), the others' as before; Table 2 counts the good seeds.
    assert series.groupby("run_id")["value"].apply(list).to_dict() == {a: LOSSES_A, b: LOSSES_B, "copy-of-a": LOSSES_A}
    assert all(len(df) for df in layers.values())
    assert summary["count"].tolist() == [2]
    assert store.status("copy-of-a") == victim["status"]
    assert store.warnings and any(words.split(" ")[0] in w and "copy-of-a" in w for w in store.warnings)
    assert len(store.warnings) == len(set(store.warnings))
    assert any("copy-of-a" in w for w in caught)


def test_check_run_info_never_raises_and_keeps_unknown_fields():
    found = check_run_info(
        json.dumps({"status": "finished", "config": {"lr": 0.1}, "mine": [1], "heartbeat_at": 3, "step": True}).encode()
    )
    assert found.damage is None and found.info == {"status": "finished", "config": {"lr": 0.1}, "mine": [1]}
    assert [p.split(" ")[0] for p in found.problems] == ["heartbeat_at", "step"]
    for raw in (b"\xff\xfe", b"   ", b"[", b"true", b'{"config": "x", "status": null}'):
        assert check_run_info(raw).damage


def every_damage(root: Path, a: str) -> None:
    """Every kind of damage at once, beside the good runs a and b."""
    for kind in RUN_JSON:
        damage_run_json(root, a, f"damaged-{kind}", kind)
    os.symlink("loop", root / "loop")  # a symlink to itself among the run folders
    looped = root / "damaged-metrics-loop"
    shutil.copytree(root / a, looped)
    shutil.rmtree(looped / "metrics")
    os.symlink("metrics", looped / "metrics")
    shutil.copytree(root / a, root / os.fsdecode(b"run-\xff"))  # a folder name that is not UTF-8
    json_loop = root / "damaged-run-json-loop"
    shutil.copytree(root / a, json_loop)
    (json_loop / "run.json").unlink()
    os.symlink("run.json", json_loop / "run.json")
    part_loop = root / a / "metrics" / "part-00000099-abcdef.parquet"
    os.symlink(part_loop.name, part_loop)
    (root / a / "metrics" / os.fsdecode(b"x-\xff.parquet")).write_bytes(b"not parquet")
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), root / a / "metrics" / "aaa-foreign.parquet")
    pq.write_table(
        pa.table(
            {
                "run_id": ["z"],
                "step": ["one"],
                "epoch": [0.0],
                "wall_time": [0.0],
                "layer": [""],
                "metric": ["train/loss"],
                "value": [1.0],
            }
        ),
        root / a / "metrics" / "zzz-foreign.parquet",
    )


def test_loops_names_and_foreign_files_are_skipped_with_a_warning(good_store, tmp_path):
    root, a, b = copy_store(good_store, tmp_path)
    every_damage(root, a)
    store = RunStore(root)
    runs, series, layers, summary, caught = read_all(store)
    assert runs.loc[a, "status"] == runs.loc[b, "status"] == "finished"
    assert runs.loc["damaged-metrics-loop", "status"] == "finished"  # its run.json is fine; no data
    assert runs.loc["damaged-run-json-loop", "status"] == "damaged"
    assert "cannot be read (Too many levels of symbolic links)" in runs.loc["damaged-run-json-loop", "damage"]
    assert "loop" not in runs.index and not any("\\xff" in r or "\udcff" in r for r in runs.index)
    assert series[series.run_id == a]["value"].tolist() == LOSSES_A
    assert series[series.run_id == b]["value"].tolist() == LOSSES_B
    assert summary["count"].tolist() == [2] and summary["mean"].tolist() == pytest.approx([0.6])
    text = "\n".join(store.warnings)
    for words in (
        "damaged-metrics-loop/metrics: cannot be listed",
        "part-00000099-abcdef.parquet: cannot be read",
        "run-\\xff: its folder name is not UTF-8",
        "x-\\xff.parquet: its name is not UTF-8",
        "aaa-foreign.parquet: not a lawn-monitor metrics file",
        "zzz-foreign.parquet: not a lawn-monitor",
    ):
        assert words in text
    text.encode("utf-8")  # printable anywhere: no lone surrogates
    assert len(caught) == len(store.warnings)  # each once, however many queries


def test_a_renamed_run_folder_still_counts(good_store, tmp_path):
    """Rows belong to the folder their file is in, not to the run_id written inside them."""
    root, a, b = copy_store(good_store, tmp_path)
    (root / b).rename(root / "renamed")
    store = RunStore(root)
    assert set(store.runs()["run_id"]) == {a, "renamed"}
    assert store.summary("test/acc", by=["optimizer"])["count"].tolist() == [2]
    assert store.series("renamed", "train/loss")["value"].tolist() == LOSSES_B
    assert len(store.layers("renamed", "weight_norm")) and "train/loss" in store.metrics("renamed")
    shutil.copytree(root / a, root / "copy")  # a copy counts as a run of its own, not twice as a
    assert store.series([a, "copy"], "train/loss").groupby("run_id").size().to_dict() == {a: 3, "copy": 3}


def test_run_ids_outside_the_root_read_nothing(good_store, tmp_path):
    root, a, _ = copy_store(good_store, tmp_path)
    shutil.copytree(root / a, tmp_path / "outside")
    store = RunStore(root)
    for run_id in ("../outside", "..", ".", f"{a}/../../outside", ""):
        assert store.series(run_id, "train/loss").empty and store.run_info(run_id) is None
        assert store.layers(run_id, "weight_norm").empty


def cli(argv, capsys):
    rc = cli_main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_runs_and_compare_exit_0_over_every_damage(good_store, tmp_path, capsys):
    root, a, b = copy_store(good_store, tmp_path)
    every_damage(root, a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out, err = cli(["runs", "--root", str(root)], capsys)
        assert rc == 0 and "Traceback" not in err
        lines = {line.split()[0]: line for line in out.splitlines()[1:]}
        assert "finished" in lines[a] and "finished" in lines[b]
        assert "damaged" in lines["damaged-array"] and "an array, not an object" in lines["damaged-array"]
        assert "damaged" in lines["damaged-missing"] and "no run.json" in lines["damaged-missing"]
        rc, out, err = cli(["compare", "--by", "optimizer", "--root", str(root)], capsys)
        assert rc == 0 and "Traceback" not in err
        assert out.splitlines()[1].split()[:2] == ["adam", "0.6"]  # a and b only: damaged runs are not "finished"


PAGES = ["runs", "live", "flattening", "adaptivity", "compare"]


@pytest.mark.slow
def test_every_page_renders_over_every_damage(good_store, tmp_path):
    from tests.helpers import run_app

    root, a, _ = copy_store(good_store, tmp_path)
    every_damage(root, a)
    for page in PAGES:  # run_app fails on any exception on the page
        at = run_app(root, page)
        (expander,) = [e for e in at.expander if "store warning" in e.label]
        assert int(expander.label.split()[0]) >= len(RUN_JSON) and "damaged-array" in at.code[0].value
