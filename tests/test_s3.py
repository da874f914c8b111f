"""A store on object storage: runs written to s3://, read back through DuckDB, compacted.

The S3 server is moto's, started by the test on 127.0.0.1 (never a real cloud); the client side
is the real s3fs, configured the way a user would: AWS_* environment variables.
"""

import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from lawn_monitor import Monitor, RunStore  # noqa: E402
from tests.helpers import s3_server  # noqa: E402


@pytest.fixture
def bucket():
    with s3_server("lawn-runs") as env:
        yield "s3://lawn-runs/team/runs", env


def train_run(root, optimizer, seed, steps=12):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-2)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=0.1)
    )
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    with Monitor(
        model,
        opt,
        root=root,
        config={"optimizer": optimizer, "seed": seed},
        name=optimizer,
        total_steps=steps,
        flush_every=4,
        probe_batch=(x, y),
    ) as monitor:
        for _ in range(steps):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss, logits=logits, targets=y)
        monitor.log_eval(acc=(model(x).argmax(1) == y).float().mean(), loss=loss)
    return monitor.run_id


@pytest.mark.slow
def test_s3_round_trip(bucket):
    root, env = bucket
    ids = [train_run(root, opt, seed) for opt in ("adam", "sgd") for seed in (0, 1)]
    store = RunStore(root)
    runs = store.runs().set_index("run_id")
    assert set(runs.index) == set(ids) and (runs["status"] == "finished").all()
    loss = store.series(ids, "train/loss")
    assert loss.groupby("run_id").size().to_dict() == {i: 12 for i in ids}
    assert set(store.layers(ids[0], "weight_norm")["layer"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    table = store.summary("test/acc", by=["optimizer"]).set_index("optimizer")
    assert table["count"].to_dict() == {"adam": 2, "sgd": 2}
    # Objects, not files: each run ended compacted into one object, and nothing else is there.
    import s3fs

    fs = s3fs.S3FileSystem()
    keys = fs.find("lawn-runs/team/runs")
    assert sorted(k.rsplit("/", 1)[-1][:8] for k in keys if ids[0] in k) == ["compact-", "run.json"]
    assert not [k for k in keys if k.endswith(".tmp")]
    # The command line reads the same bucket.
    out = subprocess.run(
        [sys.executable, "-m", "lawn_monitor.cli", "runs", "--root", root],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
    )
    assert out.returncode == 0, out.stderr
    assert all(run_id in out.stdout for run_id in ids)


def test_s3_one_writer_per_run(bucket):
    from lawn_monitor.lock import RunLockedError
    from lawn_monitor.sink import ParquetSink
    from tests.store_writer import flush_table

    root = bucket[0] + "-lock"
    first = ParquetSink(root, "r", {"name": "r"})  # the lock: a put with If-None-Match: *
    with pytest.raises(RunLockedError, match="run r is being written by"):
        ParquetSink(root, "r", {"name": "r"})
    first.write(flush_table("r", 0))
    first.close("finished")
    second = ParquetSink.reopen(root, "r", {"name": "r"}, keep_through_step=9)  # released on close
    second.close("finished")
    assert RunStore(root).series("r", "train/loss", points=None)["step"].tolist() == list(range(10))
