"""The Lightning callback, through a real lightning.pytorch.Trainer on a CPU: exactly the
optimizer steps under accumulate_grad_batches, the losses of their micro-batches, validation
metrics, how the run ended, and resuming from a Lightning checkpoint on the same run."""

import json
import os
import signal

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from lawn_monitor import LAWN, RunStore  # noqa: E402
from lawn_monitor.integrations.lightning import LawnMonitorCallback  # noqa: E402
from lawn_monitor.probes import ProbeConfig  # noqa: E402

# 40 samples in batches of 8, two batches per step: 3 optimizer steps an epoch (the last alone).
STEPS_PER_EPOCH = 3


pytestmark = pytest.mark.usefixtures("one_thread")


class Classifier(L.LightningModule):
    def __init__(self, fail_at_step: int | None = None, error: type[BaseException] | None = RuntimeError):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 4))
        self.losses: list[tuple[int, float]] = []  # (steps completed before it, loss) per micro-batch
        self.fail_at_step, self.error = fail_at_step, error

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.fail_at_step:
            if self.error is None:  # as a scheduler or `kill` stops a job
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise self.error("boom")
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.losses.append((self.trainer.global_step, float(loss.detach())))
        return {"loss": loss, "logits": logits.detach(), "targets": y}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return LAWN(torch.optim.Adam(self.parameters(), lr=1e-2), free_steps=2)


def loader():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 5, generator=g), torch.randint(0, 4, (40,), generator=g))
    return DataLoader(data, batch_size=8)


def trainer(tmp_path, epochs, callback, **kwargs):
    return L.Trainer(
        max_epochs=epochs,
        accumulate_grad_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        **kwargs,
    )


def rows(root, run_id):
    import duckdb

    return duckdb.sql(f"SELECT step, layer, metric, value FROM read_parquet({RunStore(root).files([run_id])!r})").df()


def test_records_exactly_the_optimizer_steps(tmp_path):
    root = tmp_path / "runs"
    model = Classifier()
    probe_batch = next(iter(loader()))  # curvature calls the LightningModule's forward
    every_point = ProbeConfig(gn_groups=2, hessian_probes=4, sharpness_iters=3, budget=1e6)
    callback = LawnMonitorCallback(
        root=root, name="lit", flush_every=1000, probe_batch=probe_batch, probe_config=every_point
    )
    fit = trainer(tmp_path, 2, callback, enable_checkpointing=False)
    fit.fit(model, loader(), loader())
    assert fit.global_step == 2 * STEPS_PER_EPOCH
    (run,) = RunStore(root).runs()["run_id"]
    df = rows(root, run)
    assert sorted(df["step"].unique()) == list(range(1, fit.global_step + 1))
    assert (df.query("metric == 'grad_norm'")["value"] > 0).all()
    got = df.set_index(["step", "metric", "layer"])["value"]
    for step in range(1, fit.global_step + 1):  # the mean of the step's micro-batches' losses
        losses = [loss for before, loss in model.losses if before == step - 1]
        assert got[(step, "train/loss", "")] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        assert 0 <= got[(step, "train/acc", "")] <= 1
    assert got[(STEPS_PER_EPOCH, "phase", "")] == 1.0 and got[(2, "phase", "")] == 0.0
    evals = df.query("metric == 'val/acc'")  # val_acc: the validation split
    assert df.query("metric == 'val/loss'")["step"].tolist() == evals["step"].tolist()
    assert not df["metric"].str.startswith("test/").any()
    assert sorted(evals["step"]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]  # after each epoch
    for metric in ("gn_trace", "hessian_trace", "sharpness"):
        assert df.query("metric == @metric and layer == ''")["value"].notna().any(), metric
    assert json.loads((root / run / "run.json").read_text())["status"] == "finished"


def test_resumes_from_a_lightning_checkpoint_on_the_same_run(tmp_path):
    """Fit 2 epochs with a checkpoint after each; resume from the first one for 3 epochs in all:
    one run, steps 1..9 each exactly once (those written after the checkpoint dropped)."""
    root = tmp_path / "runs"
    saves = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    first = L.Trainer(
        max_epochs=2,
        accumulate_grad_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[LawnMonitorCallback(root=root, flush_every=1000), saves],
    )
    first.fit(Classifier(), loader(), loader())
    (run,) = RunStore(root).runs()["run_id"]
    assert rows(root, run)["step"].max() == 2 * STEPS_PER_EPOCH
    checkpoint = sorted((tmp_path / "ckpt").glob("epoch=0*.ckpt"))[0]

    second = L.Trainer(
        max_epochs=3,
        accumulate_grad_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        callbacks=[LawnMonitorCallback(root=root, flush_every=1000)],
    )
    second.fit(Classifier(), loader(), loader(), ckpt_path=checkpoint)
    assert second.global_step == 3 * STEPS_PER_EPOCH
    assert list(RunStore(root).runs()["run_id"]) == [run]  # the same run, continued
    df = rows(root, run)
    keys = ["step", "layer", "metric"]
    assert not df.duplicated(keys).any(), df[df.duplicated(keys, keep=False)].sort_values(keys).head()
    assert sorted(df.query("metric == 'grad_norm' and layer == ''")["step"]) == list(range(1, second.global_step + 1))
    info = json.loads((root / run / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"][0]["from_step"] == STEPS_PER_EPOCH


@pytest.mark.parametrize(
    "error, status", [(RuntimeError, "failed"), (KeyboardInterrupt, "interrupted"), (None, "interrupted")]
)
def test_the_run_ends_as_fit_ended(tmp_path, error, status):
    """An exception: failed; Ctrl-C: interrupted; SIGTERM (error None): interrupted."""
    root = tmp_path / "runs"
    fit = trainer(tmp_path, 2, LawnMonitorCallback(root=root, flush_every=1000), enable_checkpointing=False)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        # Lightning turns Ctrl-C into a graceful shutdown and sys.exit(1), ignoring SIGINT
        # meanwhile; SIGTERM into SIGTERMException (a SystemExit) at the end of the step.
        with pytest.raises(RuntimeError if error is RuntimeError else SystemExit):
            fit.fit(Classifier(fail_at_step=2, error=error), loader())
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    (run,) = RunStore(root).runs()["run_id"]
    info = json.loads((root / run / "run.json").read_text())
    assert info["status"] == status
    steps = sorted(rows(root, run)["step"].unique())
    if error is None:
        # SIGTERM: Lightning raises at the end of the step it lands in, after the optimizer step,
        # and the Monitor has that step (step 3) or, where the hook that records it runs after
        # Lightning's check (seen in a fresh CI environment), steps up to the one before: never a
        # gap, never a step twice.
        assert steps[:2] == [1, 2] and steps == list(range(1, len(steps) + 1)) and len(steps) <= 3, steps
    else:
        assert steps == [1, 2]
    if status == "failed":
        assert "RuntimeError: boom" in info["error"]


class Clipped(Classifier):
    """Keeps the total gradient norm Lightning's hook sees before clipping."""

    def __init__(self):
        super().__init__()
        self.preclip: list[float] = []

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.preclip.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_gradient_clipping_records_the_norm_before_it(tmp_path):
    root = tmp_path / "runs"
    model = Clipped()
    fit = trainer(
        tmp_path,
        1,
        LawnMonitorCallback(root=root, flush_every=1000),
        enable_checkpointing=False,
        gradient_clip_val=1e-3,
    )
    fit.fit(model, loader())
    (run,) = RunStore(root).runs()["run_id"]
    got = rows(root, run).set_index(["step", "metric", "layer"])["value"]
    assert len(model.preclip) == fit.global_step == STEPS_PER_EPOCH
    for step, value in enumerate(model.preclip, 1):
        assert got[(step, "grad_norm_preclip", "")] == pytest.approx(value, rel=1e-5)
        assert value > 0.01 and got[(step, "grad_norm", "")] == pytest.approx(1e-3, rel=1e-3)  # after clipping
