"""One Monitor over two optimizers (a GAN): one run, each optimizer's whole-model metrics named
``<metric>/<name>``, each layer's norms taken at its own optimizer's step, checked against the
gradients and updates each optimizer actually had."""

from __future__ import annotations

import duckdb
import pytest
import torch
from torch import nn

from lawn_monitor import Monitor, RunStore
from lawn_monitor.probes import ProbeConfig

pytestmark = pytest.mark.usefixtures("one_thread")

NOISE, DATA = 3, 4


def gan(seed: int = 0) -> tuple[nn.ModuleDict, torch.optim.Optimizer, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.ModuleDict(
        {
            "G": nn.Sequential(nn.Linear(NOISE, 8), nn.ReLU(), nn.Linear(8, DATA)),
            "D": nn.Sequential(nn.Linear(DATA, 8), nn.ReLU(), nn.Linear(8, 1)),
        }
    )
    opt_d = torch.optim.Adam(model["D"].parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_g = torch.optim.SGD(model["G"].parameters(), lr=1e-2)
    return model, opt_d, opt_g


def layer_norms(module: nn.Module, prefix: str, what: str) -> dict[str, float]:
    return {
        f"{prefix}.{name}": float((p.grad if what == "grad" else p.detach()).norm())
        for name, p in module.named_parameters()
    }


def gan_step(model, opt_d, opt_g, real, seen: dict, d_steps: int = 1, g_step: bool = True) -> torch.Tensor:
    """pytorch/examples' DCGAN update: D on real and fake, then G through D, whose gradients
    are NOT zeroed first, so after G's backward D's .grad holds more than D stepped with.
    ``seen`` gets each optimizer's per-layer gradient norms and update norms as it stepped."""
    bce = nn.BCEWithLogitsLoss()
    for _ in range(d_steps):
        opt_d.zero_grad()
        fake = model["G"](torch.randn(len(real), NOISE))
        loss_d = bce(model["D"](real), torch.ones(len(real), 1)) + bce(
            model["D"](fake.detach()), torch.zeros(len(real), 1)
        )
        loss_d.backward()
        seen["D_grad"] = layer_norms(model["D"], "D", "grad")
        before = {n: p.detach().clone() for n, p in model["D"].named_parameters()}
        opt_d.step()
        seen["D_update"] = {f"D.{n}": float((p.detach() - before[n]).norm()) for n, p in model["D"].named_parameters()}
    if g_step:
        opt_g.zero_grad()
        loss_g = bce(model["D"](model["G"](torch.randn(len(real), NOISE))), torch.ones(len(real), 1))
        loss_g.backward()
        seen["G_grad"] = layer_norms(model["G"], "G", "grad")
        before = {n: p.detach().clone() for n, p in model["G"].named_parameters()}
        opt_g.step()
        seen["G_update"] = {f"G.{n}": float((p.detach() - before[n]).norm()) for n, p in model["G"].named_parameters()}
    return loss_d


def stored(root, run_id) -> dict[tuple[int, str, str], float]:
    df = duckdb.sql(f"SELECT step, metric, layer, value FROM read_parquet({RunStore(root).files([run_id])!r})").df()
    return {(r.step, r.metric, r.layer): r.value for r in df.itertuples()}


def check_step(rows, step: int, seen: dict, names: tuple[str, ...]) -> None:
    for name in names:
        for layer, value in seen[f"{name}_grad"].items():
            assert rows[(step, "grad_norm", layer)] == pytest.approx(value, rel=1e-5)
        for layer, value in seen[f"{name}_update"].items():
            assert rows[(step, "update_norm", layer)] == pytest.approx(value, rel=1e-5, abs=1e-7)
        whole = sum(v**2 for v in seen[f"{name}_grad"].values()) ** 0.5
        assert rows[(step, f"grad_norm/{name}", "")] == pytest.approx(whole, rel=1e-5)


@pytest.mark.parametrize("how", ["step", "attach"])
def test_one_monitor_over_a_gan_records_each_optimizer_at_its_own_step(tmp_path, how):
    model, opt_d, opt_g = gan()
    config = ProbeConfig(curvature=False)
    if how == "step":  # a loop of one's own: monitor.step() after both optimizers stepped
        monitor = Monitor(model, {"D": opt_d, "G": opt_g}, root=tmp_path, name="gan", probe_config=config)
    else:  # attached by name: a step is recorded when both have stepped
        monitor = Monitor(model, root=tmp_path, name="gan", probe_config=config)
        monitor.attach(opt_d, name="D")
        monitor.attach(opt_g, name="G")
    real = torch.randn(16, DATA) + 2.0
    checks = []
    for step in range(1, 6):
        seen: dict = {}
        loss_d = gan_step(model, opt_d, opt_g, real, seen)
        if how == "step":
            monitor.step(loss=loss_d)
        else:
            monitor.observe(loss=loss_d)  # the outputs of the step about to complete
        assert monitor.step_count == step
        checks.append(seen)
    monitor.close()
    assert len(RunStore(tmp_path).runs()) == 1
    rows = stored(tmp_path, monitor.run_id)
    for step, seen in enumerate(checks, 1):
        check_step(rows, step, seen, ("D", "G"))
        for metric, value in (("lr/D", 2e-3), ("lr/G", 1e-2), ("phase/D", 0.0), ("phase/G", 0.0)):
            assert rows[(step, metric, "")] == pytest.approx(value)
    whole = {metric for (_, metric, layer) in rows if layer == ""}
    assert {"update_norm/D", "update_norm/G", "weight_norm/G", "update_ratio/D", "train/loss"} <= whole
    assert not whole & {"lr", "update_norm", "grad_norm", "weight_norm"}  # no blend of the two


def test_a_critic_stepping_twice_per_generator_step_under_attach(tmp_path):
    """WGAN-style: D steps twice, G once. A step is recorded before an optimizer steps a second
    time, so each D step is one step and G's values come every second step."""
    model, opt_d, opt_g = gan(1)
    monitor = Monitor(model, {"D": opt_d, "G": opt_g}, root=tmp_path, probe_config=ProbeConfig(curvature=False))
    monitor.attach()
    real = torch.randn(16, DATA)
    for _ in range(3):
        seen: dict = {}
        gan_step(model, opt_d, opt_g, real, seen, d_steps=2)
    monitor.close()
    rows = stored(tmp_path, monitor.run_id)
    assert monitor.step_count == 6
    assert sorted(s for (s, m, _) in rows if m == "update_norm/D") == [1, 2, 3, 4, 5, 6]
    assert sorted(s for (s, m, _) in rows if m == "update_norm/G") == [2, 4, 6]
    check_step(rows, 6, seen, ("D", "G"))


def test_optimizer_names_are_checked(tmp_path):
    model, opt_d, opt_g = gan()
    with pytest.raises(ValueError, match="optimizer name 'D/x'"):
        Monitor(model, {"D/x": opt_d}, root=tmp_path)
    monitor = Monitor(model, opt_d, root=tmp_path)
    with pytest.raises(ValueError, match="name every optimizer"):
        monitor.attach(opt_g, name="G")
    monitor.close()


def lightning_gan():
    """A Lightning GAN in manual optimization (built here: Lightning is optional for the rest)."""
    import lightning.pytorch as L

    class GAN(L.LightningModule):
        def __init__(self):
            super().__init__()
            model, _, _ = gan(2)
            self.G, self.D = model["G"], model["D"]
            self.automatic_optimization = False
            self.seen: list[dict] = []

        def training_step(self, batch, batch_idx):
            (real,) = batch
            opt_d, opt_g = self.optimizers()
            bce = nn.BCEWithLogitsLoss()
            seen: dict = {}
            fake = self.G(torch.randn(len(real), NOISE))
            loss_d = bce(self.D(real), torch.ones(len(real), 1)) + bce(self.D(fake.detach()), torch.zeros(len(real), 1))
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            seen["D_grad"] = layer_norms(self.D, "D", "grad")
            before = {n: p.detach().clone() for n, p in self.D.named_parameters()}
            opt_d.step()
            seen["D_update"] = {f"D.{n}": float((p.detach() - before[n]).norm()) for n, p in self.D.named_parameters()}
            loss_g = bce(self.D(fake), torch.ones(len(real), 1))
            opt_g.zero_grad()
            self.manual_backward(loss_g)  # D's gradients grow too: D does not step on them
            seen["G_grad"] = layer_norms(self.G, "G", "grad")
            before = {n: p.detach().clone() for n, p in self.G.named_parameters()}
            opt_g.step()
            seen["G_update"] = {f"G.{n}": float((p.detach() - before[n]).norm()) for n, p in self.G.named_parameters()}
            self.seen.append(seen)
            return {"loss": loss_d.detach()}

        def configure_optimizers(self):
            return torch.optim.Adam(self.D.parameters(), lr=2e-3), torch.optim.SGD(self.G.parameters(), lr=1e-2)

    return L, GAN()


@pytest.mark.slow  # Lightning's Trainer set-up: a few seconds
def test_lightning_manual_optimization_gan_with_one_callback(tmp_path):
    pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    from lawn_monitor.integrations.lightning import LawnMonitorCallback

    L, module = lightning_gan()
    root = tmp_path / "runs"
    callback = LawnMonitorCallback(
        root=root, flush_every=1000, optimizer_names=["D", "G"], probe_config=ProbeConfig(curvature=False)
    )
    data = DataLoader(TensorDataset(torch.randn(32, DATA) + 2.0), batch_size=8)
    fit = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    fit.fit(module, data)
    [run_id] = RunStore(root).run_ids()
    rows = stored(root, run_id)
    assert len(module.seen) == 4 and max(s for s, _, _ in rows) == 4  # one step per batch, both optimizers in it
    for step, seen in enumerate(module.seen, 1):
        check_step(rows, step, seen, ("D", "G"))
        assert rows[(step, "lr/D", "")] == pytest.approx(2e-3) and rows[(step, "lr/G", "")] == pytest.approx(1e-2)
        assert (step, "train/loss", "") in rows
    assert RunStore(root).runs().loc[0, "status"] == "finished"
