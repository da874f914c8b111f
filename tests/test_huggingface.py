"""The Hugging Face callback, through a real transformers.Trainer on a CPU with a tiny GPT-2 built
from a config (no download): exactly the optimizer steps under gradient_accumulation_steps, the
causal LM's (B, T, V) logits against its shifted labels, curvature through its ModelOutput."""

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lawn_monitor import RunStore  # noqa: E402
from lawn_monitor.integrations.huggingface import LawnMonitorCallback, is_causal_lm, next_token_targets  # noqa: E402
from lawn_monitor.probes import ProbeConfig  # noqa: E402

VOCAB, LENGTH = 100, 12


pytestmark = pytest.mark.usefixtures("one_thread")


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the first 3 tokens of each are a prompt that is not trained on."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[:3] = -100
        return {"input_ids": self.ids[i], "labels": labels}


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def rows(root, run_id):
    import duckdb

    return duckdb.sql(f"SELECT step, layer, metric, value FROM read_parquet({RunStore(root).files([run_id])!r})").df()


@pytest.mark.slow  # 2 to 7 s here (with other jobs running), most of it the Trainer's own set-up
def test_records_exactly_the_optimizer_steps_of_a_causal_lm(tmp_path):
    root = tmp_path / "runs"
    model = tiny_gpt2()
    assert is_causal_lm(model)
    probe_ids = Tokens(8, seed=1).ids
    one_point = ProbeConfig(
        gn_points=1,
        gn_size=4,
        gn_groups=2,
        hessian_points=1,
        hessian_probes=4,
        hessian_size=4,
        sharpness_points=1,
        sharpness_iters=3,
        sharpness_size=4,
        budget=1e6,
    )
    callback = LawnMonitorCallback(
        root=root,
        name="gpt2",
        flush_every=1000,
        probe_config=one_point,
        probe_batch=(probe_ids, next_token_targets(probe_ids)),
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        eval_strategy="epoch",
        logging_strategy="steps",
        logging_steps=1,
        max_grad_norm=1e-3,  # every step clipped
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(24, seed=0), eval_dataset=Tokens(8, seed=2), callbacks=[callback]
    )
    trainer.train()
    steps = trainer.state.global_step
    assert steps == 3  # 24 sequences, 4 a micro-batch, 2 micro-batches a step

    (run,) = RunStore(root).runs()["run_id"]
    df = rows(root, run)
    assert sorted(df["step"].unique()) == list(range(1, steps + 1))
    assert (df.query("metric == 'grad_norm'")["value"] > 0).all()
    got = df.set_index(["step", "metric", "layer"])["value"]
    for step in range(1, steps + 1):
        for metric in ("train/loss", "train/acc", "logit_norm", "max_prob", "flat_frac"):
            assert math.isfinite(got[(step, metric, "")]), (step, metric)
        assert abs(got[(step, "train/loss", "")] - math.log(VOCAB)) < 1.0  # a fresh model: about uniform
    for metric in ("gn_trace", "hessian_trace", "sharpness"):
        assert df.query("metric == @metric and layer == ''")["value"].notna().any(), metric
    assert df.query("metric == 'val/loss'")["step"].tolist() == [steps]  # eval_loss: the validation split
    # The norm before clipping is the Trainer's own logged grad_norm; grad_norm is after it.
    logged = {entry["step"]: entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry}
    assert sorted(logged) == list(range(1, steps + 1))
    for step, value in logged.items():
        assert got[(step, "grad_norm_preclip", "")] == pytest.approx(value, rel=1e-6)
        assert value > 0.01 and got[(step, "grad_norm", "")] == pytest.approx(1e-3, rel=1e-3)
    assert json.loads((root / run / "run.json").read_text())["status"] == "finished"


def test_the_loss_recorded_is_the_models_own_on_the_kept_positions(tmp_path):
    """The forward hook's loss for one micro-batch: GPT-2's loss (its labels shifted inside)."""
    model = tiny_gpt2()
    callback = LawnMonitorCallback(root=tmp_path, flush_every=1000)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    state = transformers.TrainerState(max_steps=1, is_world_process_zero=True)
    callback.on_train_begin(args, state, transformers.TrainerControl(), model=model, optimizer=None)
    data = Tokens(4, seed=0)
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    model.train()
    output = model(**batch)
    output.loss.backward()
    run_id = callback.monitor.run_id
    callback.on_optimizer_step(args, state, transformers.TrainerControl(), optimizer=None)
    callback.on_train_end(args, state, transformers.TrainerControl())
    got = rows(tmp_path, run_id).set_index(["step", "metric", "layer"])["value"]
    assert got[(1, "train/loss", "")] == pytest.approx(output.loss.item(), rel=1e-5)
