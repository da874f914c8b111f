"""Sharded training: two processes (torchrun, gloo on CPU) under FSDP2 and under DDP write, from
rank 0 only, the per-layer values one process writes training the same model on the same global
batches (tests/sharded_worker.py has the training)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from lawn_monitor import RunStore
from lawn_monitor.outputs import Outputs
from lawn_monitor.probes import OutputStats, StepContext, layer_norms
from tests.sharded_worker import MODES, STEPS, train_unsharded

REPO = Path(__file__).resolve().parents[1]
TIMED = ("step_time", "samples_per_s", "curvature_time")
CURVATURE = (
    "gn_trace",
    "gn_trace_se",
    "hessian_trace",
    "hessian_trace_se",
    "sharpness",
    "sharpness_threshold",
    "sharpness_precond",
)


def metric_rows(root: Path):
    store = RunStore(root)
    (run_id,) = store.run_ids()  # exactly one run: rank 1 wrote none
    df = duckdb.sql(f"SELECT step, layer, metric, value FROM read_parquet({store.files([run_id])!r})").df()
    return df[~df["metric"].isin(TIMED)]


@pytest.mark.slow
def test_fsdp2_and_ddp_match_one_process(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "sharded_worker.py"),
        str(tmp_path / "two"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["mask_ok"] and ranks[1]["mask_ok"]

    for mode in MODES:
        zero, one = ranks[0][mode], ranks[1][mode]
        assert zero["writes"] and zero["run_dir"]
        assert not one["writes"] and one["run_dir"] is None
        # One all-reduce of one stacked tensor per probe call, on every rank alike: FSDP2 reduces
        # the norms' sums and the output statistics; DDP only the output statistics (its
        # parameters and averaged gradients are the same on every rank: nothing counted twice).
        per_step = 2 if mode == "fsdp" else 1
        assert zero["monitor_all_reduces"] == one["monitor_all_reduces"] == [per_step] * STEPS
        # LAWN: nothing in the free phase; under FSDP2 one for the targets at the switch, then one
        # for the tangent projection and one for the rescaling each constrained step.
        lawn = [0, 0, 3, 2, 2, 2] if mode == "fsdp" else [0] * STEPS
        assert zero["lawn_all_reduces"] == one["lawn_all_reduces"] == lawn
        assert zero["lawn_target_type"] == "Tensor"  # portable checkpoints: not a DTensor
        assert zero["lawn_norm_rel_err"] < 1e-6  # the whole tensors sit on their float32 targets
        assert len(zero["warnings"]) == (1 if mode == "fsdp" else 0) and not one["warnings"]

        train_unsharded(mode, tmp_path / "one" / mode)
        a, b = metric_rows(tmp_path / "one" / mode), metric_rows(tmp_path / "two" / mode)
        curvature = b["metric"].isin(CURVATURE)
        # Under DDP rank 0 measures curvature alone (replicated weights); under FSDP2 it is off.
        assert curvature.any() == (mode == "ddp")
        b = b[~curvature]
        keys = ["step", "layer", "metric"]
        assert not b.duplicated(keys).any()
        merged = a.merge(b, on=keys, how="outer", indicator=True)
        assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()  # FSDP2 keeps the names
        assert {
            "weight_norm",
            "grad_norm",
            "update_ratio",
            "grad_weight_cos",
            "train/loss",
            "train/acc",
            "flat_frac",
        } <= set(merged["metric"])
        layers = ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert set(merged["layer"]) == {"", *layers}
        assert json.loads(next((tmp_path / "two" / mode).glob("*/run.json")).read_text())["layers"] == layers
        # float64 training: the trajectories agree to ~1e-15; the logged values are float32.
        got, want = merged["value_y"].to_numpy(), merged["value_x"].to_numpy()
        rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-12)
        worst = merged.iloc[int(np.argmax(rel))]
        assert rel.max() < 1e-5, (mode, worst.to_dict(), rel.max())
        print(
            f"{mode}: {len(merged)} values, max relative difference {rel.max():.2e} "
            f"({worst['metric']} {worst['layer']!r} step {worst['step']})"
        )


# --- the reduce hooks in one process: "rank 1" hands its sums to "rank 0"'s reduce ------------


def test_output_stats_reduce_gives_the_global_batch():
    torch.manual_seed(0)
    logits, targets = torch.randn(10, 4) * 5, torch.randint(0, 4, (10,))
    shares = [slice(0, 6), slice(6, 10)]  # uneven: the loss is weighted by each share's size

    def ctx(sl):
        loss = torch.nn.functional.cross_entropy(logits[sl], targets[sl])
        outputs = Outputs()
        outputs.add(loss, logits[sl], targets[sl])
        return StepContext(step=1, outputs=outputs)

    handed = []
    OutputStats(reduce=lambda t: handed.append(t) or t).compute(ctx(shares[1]))
    keys, values = OutputStats(reduce=lambda t: t + handed[0]).compute(ctx(shares[0]))
    whole_keys, whole = OutputStats().compute(ctx(slice(None)))
    assert keys == whole_keys
    torch.testing.assert_close(values, whole, rtol=1e-6, atol=1e-7)


def test_layer_norms_reduce_adds_shards():
    torch.manual_seed(0)
    w = [torch.randn(5, 3), torch.randn(4)]
    g = [torch.randn_like(t) for t in w]
    prev = [t + 0.1 * torch.randn_like(t) for t in w]
    rows = [slice(0, 3), slice(3, None)]  # dim-0 shards, as FSDP2 cuts them

    def shard(ts, i):
        return [t[rows[i]] for t in ts]

    handed = []
    layer_norms(shard(w, 1), shard(g, 1), shard(prev, 1), reduce=lambda t: handed.append(t) or t)
    got = layer_norms(shard(w, 0), shard(g, 0), shard(prev, 0), reduce=lambda t: t + handed[0])
    torch.testing.assert_close(got, layer_norms(w, g, prev), rtol=1e-6, atol=1e-7)
