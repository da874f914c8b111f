"""The Monitor's values against plain autograd recomputation, and the Parquet / run.json contract."""

import json
import math
import warnings

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from lawn_monitor import LAWN, Monitor
from lawn_monitor.schema import SCHEMA
from tests.helpers import CHEAP_METRICS


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 4))


def read_rows(run_dir):
    tables = [pq.read_table(p) for p in sorted((run_dir / "metrics").glob("*.parquet"))]
    return tables


def frame(run_dir):
    import pandas as pd

    return pd.concat([t.to_pandas() for t in read_rows(run_dir)], ignore_index=True)


def test_values_match_brute_force(tmp_path):
    model = make_model()
    opt = LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), free_steps=2)
    monitor = Monitor(
        model,
        opt,
        root=tmp_path,
        config={"optimizer": "adam", "lawn": True},
        name="bf",
        steps_per_epoch=4,
        flush_every=1000,
    )
    g = torch.Generator().manual_seed(0)
    expected = {}
    first = {}  # weight norms at the first step, the reference of weight_growth
    for step in range(1, 6):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 4, (8,), generator=g)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss, logits=logits, targets=y)
        with torch.no_grad():
            for n, p in model.named_parameters():
                w, gr, u = p.norm(), p.grad.norm(), (p - before[n]).norm()
                expected[(step, "weight_norm", n)] = float(w)
                expected[(step, "grad_norm", n)] = float(gr)
                expected[(step, "update_norm", n)] = float(u)
                expected[(step, "update_ratio", n)] = float(u / w)
                expected[(step, "grad_weight_cos", n)] = float((p * p.grad).sum() / (w * gr))
                first.setdefault(n, float(w))
                expected[(step, "weight_growth", n)] = float(w) / first[n]
                expected[(step, "update_ratio_per_lr", n)] = float(u / w) / 1e-2
            all_w = torch.cat([p.flatten() for p in model.parameters()])
            all_u = torch.cat([(p - before[n]).flatten() for n, p in model.named_parameters()])
            expected[(step, "weight_norm", "")] = float(all_w.norm())
            expected[(step, "update_norm", "")] = float(all_u.norm())
            first.setdefault("", float(all_w.norm()))
            expected[(step, "weight_growth", "")] = float(all_w.norm()) / first[""]
            expected[(step, "update_ratio_per_lr", "")] = float(all_u.norm() / all_w.norm()) / 1e-2
            per_sample = nn.functional.cross_entropy(logits, y, reduction="none")
            expected[(step, "train/loss", "")] = float(loss)
            expected[(step, "train/acc", "")] = float((logits.argmax(1) == y).float().mean())
            expected[(step, "logit_norm", "")] = float(logits.norm(dim=1).mean())
            expected[(step, "max_prob", "")] = float(logits.softmax(1).max(1).values.mean())
            expected[(step, "flat_frac", "")] = float((per_sample < 1e-3).float().mean())
            expected[(step, "phase", "")] = 1.0 if step > 2 else 0.0
            expected[(step, "lr", "")] = 1e-2
    monitor.log_eval(loss=torch.tensor(0.25), acc=0.75)
    monitor.close()

    df = frame(monitor.run_dir)
    got = {(r.step, r.metric, r.layer): r.value for r in df.itertuples()}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert got[(5, "test/acc", "")] == 0.75 and got[(5, "test/loss", "")] == 0.25
    assert set(df["metric"]) == CHEAP_METRICS
    assert df.loc[df.step == 3, "epoch"].iloc[0] == pytest.approx(0.75)


class BNNet(nn.Module):
    """conv -> BatchNorm (scale-invariant conv weight), then a linear head that feeds no norm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_adaptivity_metrics_per_param_group_lr_and_scale_invariant_layers(tmp_path):
    """Two param groups with different LRs (one decays to 0), a scale-invariant conv: every
    adaptivity value against a hand computation from the weights before and after each step."""
    torch.manual_seed(0)
    model = BNNet()
    opt = torch.optim.SGD(
        [
            {"params": [model.conv.weight, *model.bn.parameters()], "lr": 0.05},
            {"params": model.head.parameters(), "lr": 0.2},
        ],
        momentum=0.9,
    )
    monitor = Monitor(model, opt, root=tmp_path, name="groups", flush_every=1000)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 4, (16,), generator=g)
    expected, first = {}, {}
    lrs = [(0.05, 0.2), (0.05, 0.1), (0.025, 0.0)]
    for step, (lr_a, lr_b) in enumerate(lrs, 1):
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = lr_a, lr_b
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)
        with torch.no_grad():
            for n, p in model.named_parameters():
                lr = lr_b if n.startswith("head") else lr_a
                w, u = float(p.norm()), float((p - before[n]).norm())
                first.setdefault(n, w)
                expected[(step, "weight_growth", n)] = w / first[n]
                expected[(step, "update_ratio_per_lr", n)] = u / w / lr if lr > 0 else math.nan
            w_conv = float(model.conv.weight.norm())
            expected[(step, "effective_lr", "conv.weight")] = lr_a / w_conv**2
            total_w = float(torch.cat([p.flatten() for p in model.parameters()]).norm())
            total_u = float(torch.cat([(p - before[n]).flatten() for n, p in model.named_parameters()]).norm())
            first.setdefault("", total_w)
            expected[(step, "weight_growth", "")] = total_w / first[""]
            expected[(step, "update_ratio_per_lr", "")] = total_u / total_w / lr_a  # the first group's LR
    monitor.close()
    df = frame(monitor.run_dir)
    got = {(r.step, r.metric, r.layer): r.value for r in df.itertuples()}
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key  # LR 0: nothing to divide by
        else:
            assert got[key] == pytest.approx(value, rel=1e-5), key
    assert got[(1, "weight_growth", "head.weight")] == 1.0
    # Only the conv feeds a normalization layer; the head and BatchNorm's own weight do not.
    assert set(df.loc[df.metric == "effective_lr", "layer"]) == {"conv.weight"}


def test_weight_growth_is_constant_after_the_lawn_switch(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    opt = LAWN(torch.optim.Adam(model.parameters(), lr=5e-2), free_steps=4)
    monitor = Monitor(model, opt, root=tmp_path, name="lawn", flush_every=1000)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 4, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)
    monitor.close()
    df = frame(monitor.run_dir).query("metric == 'weight_growth'")
    for layer in ("0.weight", "2.weight"):  # constrained: held at the norm they had at the switch
        series = df[df.layer == layer].set_index("step")["value"].sort_index()
        assert abs(series.loc[5:] - series.loc[4]).max() < 1e-5, layer
        assert abs(series.loc[4] - 1.0) > 1e-3  # and it did move in the free phase
    bias = df[df.layer == "0.bias"].set_index("step")["value"].sort_index()
    assert bias.loc[5:].std() > 1e-4  # biases stay free


def test_parquet_and_run_json_contract(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(
        model, opt, root=tmp_path, config={"optimizer": "sgd", "seed": 3}, name="my run/1", total_steps=6, flush_every=2
    ) as monitor:
        for _ in range(6):
            x, y = torch.randn(4, 5), torch.randint(0, 4, (4,))
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss, logits=logits, targets=y)
    run_dir = monitor.run_dir
    assert run_dir.parent == tmp_path and "/" not in run_dir.name
    parts = sorted((run_dir / "metrics").glob("*"))
    # Three flushes (every 2 steps), merged at close into one file sorted by (metric, layer, step).
    assert [p.name[:25] for p in parts] == ["compact-00000000-00000002"] and parts[0].suffix == ".parquet"
    rows = pq.read_table(parts[0]).to_pandas()
    assert rows[["metric", "layer", "step"]].equals(
        rows[["metric", "layer", "step"]].sort_values(["metric", "layer", "step"], ignore_index=True)
    )
    assert not list(run_dir.rglob("*.tmp"))
    for table in read_rows(run_dir):
        assert table.schema.equals(SCHEMA)
    info = json.loads((run_dir / "run.json").read_text())
    for key in (
        "run_id",
        "name",
        "created_at",
        "status",
        "heartbeat_at",
        "ended_at",
        "config",
        "env",
        "schema_version",
    ):
        assert key in info
    assert info["status"] == "finished" and info["step"] == 6 and info["total_steps"] == 6
    assert info["config"] == {"optimizer": "sgd", "seed": 3}
    assert info["env"]["torch"] == torch.__version__


def test_no_host_sync_in_step(tmp_path, monkeypatch):
    """Between flushes nothing is copied to the host: every value stays a device tensor."""
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = Monitor(model, opt, root=tmp_path, flush_every=10_000, flush_secs=1e9)
    batches = [(torch.randn(8, 5), torch.randint(0, 4, (8,))) for _ in range(5)]

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside Monitor.step")

    for x, y in batches:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__"):
                m.setattr(torch.Tensor, name, forbidden)
            monitor.step(loss=loss, logits=logits, targets=y)
    monitor.close()
    assert len(list((monitor.run_dir / "metrics").glob("*.parquet"))) == 1


@pytest.mark.parametrize("exc, status", [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")])
def test_context_manager_records_how_the_run_ended(tmp_path, exc, status):
    model = make_model()
    with pytest.raises(type(exc)):
        with Monitor(model, None, root=tmp_path, name="ends") as monitor:
            monitor.log({"custom": 1.0})
            raise exc
    info = json.loads((monitor.run_dir / "run.json").read_text())
    assert info["status"] == status and info["ended_at"]
    if status == "failed":
        assert "RuntimeError: boom" in info["error"]
    assert frame(monitor.run_dir)["metric"].tolist() == ["custom"]  # logged rows were kept


def test_divergence_is_detected_at_flush(tmp_path):
    model = make_model()
    monitor = Monitor(model, None, root=tmp_path, flush_every=2)
    monitor.step(loss=torch.tensor(1.0))
    assert not monitor.diverged
    monitor.step(loss=torch.tensor(math.nan))
    assert monitor.diverged
    monitor.close()
    assert json.loads((monitor.run_dir / "run.json").read_text())["status"] == "diverged"
    values = frame(monitor.run_dir).query("metric == 'train/loss'")["value"]
    assert math.isnan(values.iloc[1])  # NaN is kept, not dropped


def test_disabled_monitor_writes_nothing(tmp_path):
    monitor = Monitor(make_model(), None, root=tmp_path, enabled=False)
    monitor.step(loss=torch.tensor(1.0))
    monitor.log_eval(acc=0.5)
    monitor.close()
    assert not any(tmp_path.iterdir())


def test_root_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        Monitor(make_model(), None, root=file)


def test_output_statistics_are_computed_only_on_the_steps_that_record_them(tmp_path, monkeypatch):
    """With probe_every 5 the logits' softmax runs on 1 step in 5, not on every step; the
    statistics still land on exactly those steps."""
    import lawn_monitor.outputs as outputs
    from lawn_monitor import RunStore
    from lawn_monitor.probes import ProbeConfig

    calls = []
    real = outputs.output_sums
    monkeypatch.setattr(outputs, "output_sums", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, opt, root=tmp_path, probe_config=ProbeConfig(every=5, curvature=False))
    for _ in range(20):
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss, logits=logits, targets=y)
    monitor.close()
    assert len(calls) == 4
    store = RunStore(tmp_path)
    assert store.series(store.run_ids(), "flat_frac", points=None)["step"].tolist() == [5, 10, 15, 20]


def train_steps(monitor, model, opt, steps=3, transform=lambda logits: logits, clip=None):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 4, (8,), generator=g)
        out = transform(model(x))
        loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            clip()
        opt.step()
        monitor.step(loss=loss, logits=out, targets=y)


@pytest.mark.parametrize(
    "transform, kind",
    [
        (lambda z: z, None),
        (lambda z: z.log_softmax(dim=1), "log-probabilities"),
        (lambda z: z.softmax(dim=1), "probabilities"),
    ],
)
def test_normalized_logits_are_warned_about_once(tmp_path, transform, kind):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, opt, root=tmp_path, flush_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_steps(monitor, model, opt, steps=4, transform=transform)
        monitor.close()
    found = [str(w.message) for w in caught if "look like" in str(w.message)]
    if kind is None:
        assert found == []
    else:
        assert len(found) == 1 and f"look like {kind}" in found[0]


def test_a_loop_without_an_optimizer_warns_once_that_lr_is_nan(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, None, root=tmp_path)
    with pytest.warns(UserWarning, match="no optimizer, so lr is recorded as NaN") as caught:
        train_steps(monitor, model, opt, steps=3)
    assert sum("lr is recorded as NaN" in str(w.message) for w in caught) == 1
    monitor.close()
    df = frame(monitor.run_dir)
    assert df.query("metric == 'lr'")["value"].isna().all() and len(df.query("metric == 'lr'")) == 3


def test_clip_grad_norm_records_the_norm_before_clipping(tmp_path):
    """monitor.clip_grad_norm_ returns torch's value and records it as grad_norm_preclip;
    grad_norm is the norm after clipping, what the optimizer received."""
    model, reference = make_model(), make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, opt, root=tmp_path)
    returned = []
    expected = []

    def clip():
        # torch's own value, on an identical copy with the same gradients
        for p, q in zip(model.parameters(), reference.parameters()):
            q.grad = p.grad.clone()
        expected.append(float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)))
        returned.append(float(monitor.clip_grad_norm_(0.05)))

    train_steps(monitor, model, opt, steps=3, clip=clip)
    monitor.close()
    got = frame(monitor.run_dir).query("layer == ''").set_index(["step", "metric"])["value"]
    assert returned == pytest.approx(expected, rel=1e-6)
    for step, value in enumerate(expected, 1):
        assert value > 0.05
        assert got[(step, "grad_norm_preclip")] == pytest.approx(value, rel=1e-6)
        assert got[(step, "grad_norm")] == pytest.approx(0.05, rel=1e-4)
