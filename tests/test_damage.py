"""A store that reads around damage: bad run.json files, symlink loops, names that are not UTF-8,
foreign Parquet files, renamed run folders. Each is listed or skipped with a warning; the other
runs read as before, through the API, the command line and every dashboard page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lawn_monitor import RunStore
from lawn_monitor.cli import main as cli_main
from lawn_monitor.compact import compact_store
from lawn_monitor.runinfo import check_run_info
from lawn_monitor.storage import Location
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


def make_socket(path: Path) -> None:
    """A Unix socket file at ``path`` (bound from its folder: socket paths are short)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path.name)
    finally:
        os.chdir(here)


# Files no reader may open, or not whole: what each becomes, and the words a reader says about it.
HOSTILE = {
    "fifo": (os.mkfifo, "a FIFO, not a file"),  # opening it would block the reader forever
    "folder": (os.mkdir, "a folder, not a file"),
    "socket": (make_socket, "a socket, not a file"),
    "dev-zero": (lambda p: os.symlink("/dev/zero", p), "a device, not a file"),  # reading it never ends
    "dangling": (lambda p: os.symlink("gone", p), "a symlink to nothing"),
}


def hostile_part(i: int) -> str:
    return f"part-{90 + i:08d}-{i:06x}.parquet"


def hostile_damage(root: Path, a: str) -> None:
    """Run folders whose run.json is each HOSTILE kind, nested 200,000 deep or 2 MB; the same
    kinds as part files of run a, as writer.lock of a running run, and as a run folder's metrics/."""
    info = json.loads((root / a / "run.json").read_text())
    for name in [*(f"hostile-{kind}" for kind in HOSTILE), "hostile-nested", "hostile-huge", "hostile-lock"]:
        shutil.copytree(root / a, root / name, symlinks=True)
    shutil.copytree(root / a, root / "hostile-metrics-fifo", ignore=lambda d, names: ["metrics"], symlinks=True)
    for i, (kind, (make, _)) in enumerate(HOSTILE.items()):
        (root / f"hostile-{kind}" / "run.json").unlink()
        make(root / f"hostile-{kind}" / "run.json")
        make(root / a / "metrics" / hostile_part(i))
    (root / "hostile-nested" / "run.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    (root / "hostile-huge" / "run.json").write_text(json.dumps({**info, "pad": "x" * (2 << 20)}))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a writer of this machine that no longer exists
    (root / "hostile-lock" / "run.json").write_text(json.dumps({**info, "status": "running", "pid": gone.pid}))
    os.mkfifo(root / "hostile-lock" / "writer.lock")  # a running run whose lock is a FIFO
    os.mkfifo(root / "hostile-metrics-fifo" / "metrics")


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

    hostile_damage(root, a)  # last: the copies above are of a without its special files


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


def test_every_command_reads_around_every_damage(good_store, tmp_path, capsys):
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
        rc, out, err = cli(["export", "--to", "tensorboard", str(tmp_path / "tb"), "--root", str(root)], capsys)
        assert rc == 0 and (tmp_path / "tb" / a).is_dir() and (tmp_path / "tb" / b).is_dir()
        rc, out, err = cli(["compact", "--root", str(root)], capsys)
        assert rc == 0
        assert "damaged-metrics-loop/metrics cannot be compacted (Too many levels of symbolic links)" in out
        assert "hostile-metrics-fifo/metrics cannot be compacted (a FIFO, not a folder)" in out
        assert os.path.lexists(root / a / "metrics" / f"{hostile_part(0)}.corrupt")
        rc, out, err = cli(["runs", "--root", str(root)], capsys)  # the same after compaction
        assert rc == 0 and "finished" in {line.split()[0]: line for line in out.splitlines()[1:]}[a]


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
        assert "a FIFO, not a file" in at.code[0].value and "nested too deeply" in at.code[0].value


@pytest.mark.timeout(120)
def test_special_huge_and_nested_files_are_skipped_by_name_without_blocking(good_store, tmp_path):
    root, a, b = copy_store(good_store, tmp_path)
    hostile_damage(root, a)
    store = RunStore(root)
    runs, series, layers, summary, caught = read_all(store)
    sql = store.sql("SELECT run_id, count(*) AS n FROM metrics GROUP BY run_id")
    assert runs.loc[a, "status"] == runs.loc[b, "status"] == "finished"
    for kind, (_, words) in HOSTILE.items():
        assert runs.loc[f"hostile-{kind}", "status"] == "damaged" and words in runs.loc[f"hostile-{kind}", "damage"]
    assert "nested too deeply" in runs.loc["hostile-nested", "damage"]
    assert "larger than 1 MB" in runs.loc["hostile-huge", "damage"]
    assert runs.loc["hostile-lock", "status"] == "stale"  # a FIFO for a lock: judged by run.json, not blocked on
    assert "hostile-metrics-fifo" in runs.index
    # The data of every run whose files are fine reads as before, a's special parts left out.
    assert series[series.run_id == a]["value"].tolist() == LOSSES_A
    before = RunStore(good_store[0]).sql("SELECT run_id, count(*) AS n FROM metrics GROUP BY run_id")
    assert sql.set_index("run_id")["n"][a] == before.set_index("run_id")["n"][a]
    assert summary["count"].tolist() == [2]
    text = "\n".join(store.warnings)
    for i, (kind, (_, words)) in enumerate(HOSTILE.items()):
        assert f"{a}/metrics/{hostile_part(i)}: {words}" in text or kind == "folder" and words in text
    assert "hostile-metrics-fifo/metrics: cannot be listed" in text
    assert len(caught) == len(store.warnings) == len(set(store.warnings))


def test_compaction_sets_special_files_aside_unopened(good_store, tmp_path):
    root, a, _ = copy_store(good_store, tmp_path)
    shutil.copytree(root / a, root / "metrics-loop", ignore=lambda d, names: ["metrics"])
    os.symlink("metrics", root / "metrics-loop" / "metrics")
    hostile_damage(root, a)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged, skipped = compact_store(Location(root), [a, "hostile-metrics-fifo", "metrics-loop"])
    assert merged == {a: 0}
    assert "a FIFO, not a folder" in skipped["hostile-metrics-fifo"]
    assert "Too many levels of symbolic links" in skipped["metrics-loop"]
    folder = root / a / "metrics"
    for i, kind in enumerate(HOSTILE):
        aside = folder / f"{hostile_part(i)}.corrupt"
        assert os.path.lexists(aside) and not os.path.lexists(folder / hostile_part(i)), kind
    assert stat.S_ISFIFO(os.lstat(folder / f"{hostile_part(0)}.corrupt").st_mode)  # renamed, never opened
    assert sum("renamed" in str(w.message) for w in caught) == len(HOSTILE)
    assert RunStore(root).series(a, "train/loss")["value"].tolist() == LOSSES_A


# Run as another user (root reads any file): everything is imported first, as root, because the
# interpreter's own files may not be readable by that user; then the process drops to it.
AS_NOBODY = """
import contextlib, io, json, os, sys, warnings
import lawn_monitor.cli, lawn_monitor.compact, lawn_monitor.store, lawn_monitor.integrations.tensorboard
import torch.utils.tensorboard  # what export imports when it runs
from lawn_monitor import RunStore
root, out = sys.argv[1], sys.argv[2]
os.setgid(65534)
os.setuid(65534)
warnings.simplefilter("ignore")
store = RunStore(root)
runs = store.runs().set_index("run_id")
result = {
    "status": runs["status"].to_dict(),
    "damage": runs["damage"].dropna().to_dict(),
    "series": store.series(list(runs.index), "train/loss").groupby("run_id").size().to_dict(),
    "sql": store.sql("SELECT count(DISTINCT run_id) FROM metrics").iloc[0, 0].item(),
    "summary": store.summary("test/acc", by=["optimizer"])["count"].tolist(),
    "warnings": store.warnings,
}
for argv in (["runs"], ["compare", "--by", "optimizer"], ["export", "--to", "tensorboard", out], ["compact"]):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        result[argv[0]] = [lawn_monitor.cli.main([*argv, "--root", root]), text.getvalue()]
print(json.dumps(result))
"""


@pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0, reason="needs root to run a reader as nobody")
@pytest.mark.slow
def test_files_and_folders_without_permission_are_skipped(good_store, tmp_path):
    root, a, b = copy_store(good_store, tmp_path)
    for name in ("perm-part", "perm-json", "perm-folder", "perm-metrics"):
        shutil.copytree(root / a, root / name)
    shared = Path(tempfile.mkdtemp(prefix="lawn-perm-"))  # tmp_path's parents let only root in
    try:
        shutil.move(root, shared / "runs")
        root = shared / "runs"
        for path in [shared, *shared.rglob("*")]:
            os.chown(path, 65534, 65534)
        for victim in [*(root / "perm-part" / "metrics").glob("*.parquet"), root / "perm-json" / "run.json"]:
            victim.chmod(0)
        (root / "perm-folder").chmod(0)
        (root / "perm-metrics" / "metrics").chmod(0)
        done = subprocess.run(
            [sys.executable, "-c", AS_NOBODY, str(root), str(shared / "tb")],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        found = json.loads(done.stdout)
        status = found["status"]
        assert status[a] == status[b] == status["perm-part"] == status["perm-metrics"] == "finished"
        assert status["perm-json"] == "damaged" and "Permission denied" in found["damage"]["perm-json"]
        assert "perm-folder" not in status
        assert found["series"] == {a: 3, b: 2, "perm-json": 3}  # the data of perm-json still reads
        assert found["sql"] == 3 and found["summary"] == [2]
        text = "\n".join(found["warnings"])
        assert "perm-folder: cannot be read (Permission denied)" in text
        assert "perm-metrics/metrics: cannot be listed (Permission denied)" in text
        assert "perm-part/metrics/" in text and "cannot be read (Permission denied)" in text
        for command in ("runs", "compare", "export"):
            assert found[command][0] == 0, (
                command,
                found[command],
                [line for line in done.stderr.splitlines() if "error" in line],
            )
        rc, out = found["compact"]
        assert rc == 0 and "perm-metrics/metrics cannot be compacted (Permission denied)" in out
        assert list((root / "perm-part" / "metrics").glob("*.corrupt"))  # set aside by compaction
    finally:
        shutil.rmtree(shared)
