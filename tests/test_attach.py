"""Monitor.attach (an optimizer step post-hook) and observe: exactly the real optimizer steps, the
same rows as monitor.step() in a hand-written loop, and model outputs of every shape."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lawn_monitor import LAWN, Monitor, RunStore
from lawn_monitor import curvature as C
from lawn_monitor.outputs import output_stats
from lawn_monitor.probes import GNTrace, HessianTrace, ProbeConfig

TIMED = {"step_time", "samples_per_s"}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 4))


def batches(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def rows(root, run_id):
    import duckdb

    return duckdb.sql(f"SELECT step, layer, metric, value FROM read_parquet({RunStore(root).files([run_id])!r})").df()


def values(df):
    """{(step, metric, layer): value} without the timings, which differ between two runs."""
    return {(r.step, r.metric, r.layer): r.value for r in df.itertuples() if r.metric not in TIMED}


def test_hook_records_the_real_steps_of_a_lawn_optimizer_with_accumulation(tmp_path):
    """8 micro-batches, 2 per step: 4 records, each with what monitor.step() by hand records."""
    hand_model, hook_model = make_model(), make_model()
    hand_opt = LAWN(torch.optim.Adam(hand_model.parameters(), lr=1e-2), free_steps=2)
    hook_opt = LAWN(torch.optim.Adam(hook_model.parameters(), lr=1e-2), free_steps=2)
    hand = Monitor(hand_model, hand_opt, root=tmp_path, name="hand", flush_every=1000)
    hook = Monitor(hook_model, hook_opt, root=tmp_path, name="hook", flush_every=1000)
    handle = hook.attach()  # the LAWN wrapper keeps torch's hooks: hooked itself
    assert handle is not None and hook_opt._optimizer_step_post_hooks
    window = []
    for i, (x, y) in enumerate(batches(8), 1):
        for model, _opt in ((hand_model, hand_opt), (hook_model, hook_opt)):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            (loss / 2).backward()
            if model is hook_model:
                hook.observe(loss=loss, logits=logits, targets=y)
            else:
                window.append((loss.detach(), logits.detach(), y))
        if i % 2 == 0:
            hand_opt.step()
            hook_opt.step()
            losses, logits, targets = zip(*window)
            # By hand: the mean of the micro-batches' losses, statistics over all their samples.
            hand.step(loss=torch.stack(losses).mean(), logits=torch.cat(logits), targets=torch.cat(targets))
            window = []
            hand_opt.zero_grad()
            hook_opt.zero_grad()
    hand.close()
    hook.close()
    assert not hook_opt._optimizer_step_post_hooks  # close removes the hook
    a, b = values(rows(tmp_path, hand.run_id)), values(rows(tmp_path, hook.run_id))
    assert a.keys() == b.keys()
    assert sorted({k[0] for k in b}) == [1, 2, 3, 4]
    for key, value in a.items():
        assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), key
    assert b[(3, "phase", "")] == 1.0 and b[(2, "phase", "")] == 0.0  # LAWN switched after step 2
    assert all(b[(s, "grad_norm", "")] > 0 for s in range(1, 5))


def test_a_step_the_grad_scaler_skips_is_not_recorded(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    monitor = Monitor(model, opt, root=tmp_path, flush_every=1000)
    monitor.attach()
    for i, (x, y) in enumerate(batches(4), 1):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        monitor.observe(loss=loss, logits=logits, targets=y)
        scaler.scale(loss).backward()
        if i == 2:
            model[0].weight.grad[0, 0] = math.inf  # an overflow: the scaler skips this step
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    monitor.close()
    assert scaler.get_scale() == 2.0**3  # the skip halved the scale
    df = rows(tmp_path, monitor.run_id)
    assert sorted(df["step"].unique()) == [1, 2, 3]  # 4 batches, 3 steps taken
    assert (df.query("metric == 'grad_norm'")["value"] > 0).all()


def test_steps_numbered_by_the_loop(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, opt, root=tmp_path, flush_every=1000)
    for step, (x, y) in zip([10, 20, 35], batches(3)):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss, step=step)
    with pytest.raises(ValueError, match="steps must increase"):
        monitor.step(loss=loss, step=35)
    monitor.step(loss=loss)  # without a number: the next one
    monitor.close()
    assert sorted(rows(tmp_path, monitor.run_id)["step"].unique()) == [10, 20, 35, 36]


def test_missing_gradients_warn_once_and_are_nan_not_zero(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, opt, root=tmp_path, flush_every=1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in batches(3):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            monitor.step(loss=loss)  # too late: the gradients are gone
    monitor.close()
    missing = [w for w in caught if "no parameter has a gradient" in str(w.message)]
    assert len(missing) == 1 and len(str(missing[0].message).splitlines()) == 1
    df = rows(tmp_path, monitor.run_id)
    grads = df[df.metric.isin(["grad_norm", "grad_weight_cos"])]
    assert len(grads) == 3 * 2 * 5 and grads["value"].isna().all()  # every row there, none a zero
    assert (df.query("metric == 'weight_norm'")["value"] > 0).all()


def test_attach_unwraps_accelerates_optimizer_and_records_once_per_real_step(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=2, cpu=True)
    model, opt = accelerator.prepare(model, opt)
    monitor = Monitor(model, opt, root=tmp_path, flush_every=1000, enabled=accelerator.is_main_process)
    monitor.attach(opt)  # an AcceleratedOptimizer keeps no hooks: its inner optimizer is hooked
    for x, y in batches(6):
        with accelerator.accumulate(model):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            monitor.observe(loss=loss, logits=logits, targets=y)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
    monitor.close()
    df = rows(tmp_path, monitor.run_id)
    assert sorted(df["step"].unique()) == [1, 2, 3]
    assert (df.query("metric == 'grad_norm'")["value"] > 0).all()


def test_attach_refuses_what_it_cannot_hook_and_a_second_optimizer(tmp_path):
    model = make_model()
    monitor = Monitor(model, None, root=tmp_path)
    with pytest.raises(TypeError, match="pass the torch.optim.Optimizer"):
        monitor.attach(object())
    monitor.attach(torch.optim.SGD(model.parameters(), lr=0.1))  # becomes the Monitor's optimizer
    assert monitor.optimizer is not None
    with pytest.raises(ValueError, match="to watch several optimizers with one Monitor, name each"):
        monitor.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    monitor.close()


class SeqModel(nn.Module):
    """A tiny token model returning (B, T, V) logits in a dict, or in an object with .logits."""

    def __init__(self, vocab=7, width=6, as_dict=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)
        self.as_dict = as_dict

    def forward(self, ids):
        h = self.embed(ids)
        h = h + torch.tanh(self.mix(h)).cumsum(dim=1) / (1 + torch.arange(ids.shape[1]).view(1, -1, 1))
        logits = self.head(h)
        if self.as_dict:
            return {"logits": logits}
        return type("Output", (), {"logits": logits})()


def sequence_batch(n=6, t=5, vocab=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)  # next tokens; the last position predicts none
    targets[0, :3] = -100  # a prompt that is not trained on
    return ids, targets


def test_output_stats_of_sequence_logits_leave_out_ignored_positions():
    logits = torch.randn(3, 4, 5)
    targets = torch.randint(0, 5, (3, 4))
    targets[1, 2:] = -100
    kept = targets.reshape(-1) != -100
    flat, flat_targets = logits.reshape(-1, 5)[kept], targets.reshape(-1)[kept]
    torch.testing.assert_close(output_stats(logits, targets), output_stats(flat, flat_targets))
    assert math.isnan(output_stats(logits, torch.full((3, 4), -100))[0])  # nothing to measure


def test_monitor_takes_model_outputs_of_any_shape(tmp_path):
    torch.manual_seed(0)
    model = SeqModel(as_dict=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids, targets = sequence_batch()
    every_point = ProbeConfig(gn_groups=2, hessian_probes=4, sharpness_iters=3, budget=1e6)  # no time budget
    monitor = Monitor(
        model, opt, root=tmp_path, flush_every=1000, probe_batch=(ids, targets), total_steps=2, probe_config=every_point
    )
    for _ in range(2):
        output = model(ids)
        loss = F.cross_entropy(output.logits.flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss, logits=output, targets=targets)  # the whole output: logits_fn finds them
    monitor.close()
    df = rows(tmp_path, monitor.run_id)
    got = {(r.step, r.metric, r.layer): r.value for r in df.itertuples()}
    for metric in ("train/acc", "logit_norm", "max_prob", "flat_frac", "gn_trace", "hessian_trace", "sharpness"):
        assert math.isfinite(got[(1, metric, "")]), metric


def test_curvature_of_sequence_logits_against_brute_force():
    """On (B, T, V) logits with ignored positions: the probes' loss is the mean cross-entropy
    over the kept positions, and the GN trace estimate averages to the exact GN trace of it."""
    torch.manual_seed(0)
    model = SeqModel()
    ids, targets = sequence_batch()
    names = [n for n, _ in model.named_parameters()]
    kept = targets != -100
    leaves, grads = C.loss_and_grads(model, names, ids, targets, F.cross_entropy)
    expected = F.cross_entropy(model(ids)["logits"][kept], targets[kept])
    direct = torch.autograd.grad(expected, list(model.parameters()))
    for a, b in zip(grads, direct):
        torch.testing.assert_close(a, b)

    # Exact: tr(J^T H J) per layer, summed over the kept positions, over their number.
    params = {n: p.detach() for n, p in model.named_parameters()}

    def logits_of(p):
        return torch.func.functional_call(model, p, (ids,))["logits"]

    jac = torch.func.jacrev(logits_of)(params)  # each (B, T, V, *param shape)
    p = model(ids)["logits"].detach().softmax(-1)
    hess = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (B, T, V, V)
    exact = []
    for n in names:
        j = jac[n].flatten(3)  # (B, T, V, P)
        per_position = torch.einsum("btvp,btvw,btwp->bt", j, hess, j)
        exact.append(per_position[kept].sum() / kept.sum())
    exact = torch.stack(exact)

    probe = GNTrace(ids, targets, groups=2, seed=1)
    probe.attach(model, None)
    draws = torch.stack([probe.compute(None)[1][: len(names)] for _ in range(100)])  # per-layer means
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - exact).abs() < 4 * se + 1e-6).all(), (mean, exact, se)

    h = HessianTrace(ids, targets, num_probes=4)
    h.attach(model, None)
    assert torch.isfinite(h.compute(None)[1]).all()
