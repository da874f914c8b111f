"""What the reproduction trains, and training it: the settings, the stages' runs, which of them
the store already holds, and a pool of worker processes that trains the rest.

Stages, in order (``--stages`` picks some):

* ``tune``: one Optuna study per method (``trainers.tune``) on the main setting, objective the
  validation accuracy; a rerun adds only the trials a study still lacks.
* ``seeds``: each method at its study's best setting, SEEDS seeds (none of them the seed the
  trials used), with the curvature probes on: the accuracy table, the verdicts, the mechanism.
* ``onset``: Adam-LAWN and SGD-LAWN at their best settings with fixed free phases (past the old
  10-epoch cap too) and with each onset rule at each of its candidate parameters.
* ``reach``: which tensors LAWN constrains (``lawn_params``), on the MLP and on a BatchNorm CNN
  on real MNIST.

A planned run counts as done when the store holds a run of the same name and configuration that
ended (``ENDED``); ``run_stage`` trains only the others, so a stopped regeneration resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from lawn_monitor import RunStore
from lawn_monitor.store import canonical

from ..config import TrainConfig, config_from_flags
from ..config_keys import NOT_COMPUTED

STAGES = ("tune", "seeds", "onset", "reach", "doc")
# How a run can end for good: training it again would end the same way. A run that failed, was
# interrupted or was killed is trained again.
ENDED = ("finished", "diverged")
LAWN_METHODS = ("sgd-lawn", "adam-lawn")
# The methods' names on the page (the studies' keys are trainers.tune.METHODS).
DISPLAY = {
    "sgd": "SGD",
    "sgd-lawn": "SGD-LAWN",
    "adam": "Adam",
    "adam-l2": "Adam-L2",
    "adamw": "AdamW",
    "adam-lawn": "Adam-LAWN",
}
# Curvature (gn_trace and the slower probes) may take a tenth of a seed run's time instead of the
# trainer's default 0.4; the trials and the comparisons do without it (they are judged on accuracy).
CURVATURE_BUDGET = 0.1


@dataclass(frozen=True)
class Setup:
    """Everything a regeneration trains, in one place (the page states it from here)."""

    main: dict  # the main setting's flags: data set, model, batch, epochs, warm-up
    methods: tuple[str, ...]  # keys of trainers.tune.METHODS
    trials: int  # per method's study
    seeds: tuple[int, ...]  # the seeds stage
    compare_seeds: tuple[int, ...]  # the onset and reach stages
    fixed_free: tuple[float, ...]  # epochs of the free phase the onset rules are compared with
    onset_rules: tuple[tuple[str, dict], ...]  # (label, flags) of each rule at each candidate setting
    reach_params: tuple[str, ...]  # lawn_params values compared
    reach_cnn: dict  # the BatchNorm CNN's setting (flags)
    reach_cnn_methods: tuple[str, ...]
    reach_mlp_methods: tuple[str, ...] = LAWN_METHODS
    reach_cnn_seeds: tuple[int, ...] = (1, 2)
    quick: bool = False


# The main setting: MNIST-1D (4,000 training samples of which 10% held out for validation, 1,000
# test) with the MLP at batch 64 for 20 epochs: a run takes seconds, and Adam's and SGD's training
# loss flattens within it (flat_frac rising to 0.2-0.6 by the end without weight decay).
MAIN = {"dataset": "mnist1d", "model": "mlp", "batch_size": 64, "epochs": 20, "warmup_epochs": 1.0}
METHODS = tuple(DISPLAY)

# The onset rules (the trainer's --auto-rule) at their candidate parameters, chosen on validation
# against fixed free phases. Each switches by the cap (--auto-max-epochs: 10 here) at the latest.
ONSET_RULES: tuple[tuple[str, dict], ...] = (
    ("flat_frac >= 0.5 (the old rule)", {"free_epochs": "auto", "auto_rule": "flat_frac", "auto_threshold": 0.5}),
    (
        "flat_frac >= 0.1 for 3 windows",
        {"free_epochs": "auto", "auto_rule": "flat_frac", "auto_threshold": 0.1, "auto_patience": 3},
    ),
    (
        "update_ratio_per_lr <= 0.5 x its early level",
        {"free_epochs": "auto", "auto_rule": "ratio_drop", "auto_drop": 0.5},
    ),
    (
        "logit_norm >= 1.25 x its level at train acc 0.95",
        {"free_epochs": "auto", "auto_rule": "logit_growth", "auto_acc": 0.95, "auto_growth": 1.25},
    ),
)

# The BatchNorm CNN on real MNIST, cut to fit: 20% of the 60,000 training images train (12,000,
# one epoch), 80% are the validation split; the free phase is a quarter of the epoch.
REACH_CNN = {
    "dataset": "mnist",
    "model": "cnn_bn",
    "batch_size": 128,
    "epochs": 1,
    "free_epochs": 0.25,
    "val_fraction": 0.8,
}
REACH_PARAMS = ("ndim2", "homogeneous", "all")


def setup(quick: bool = False) -> Setup:
    if quick:
        tiny = {"dataset": "digits", "model": "mlp", "batch_size": 128, "epochs": 2, "warmup_epochs": 0.2}
        return Setup(
            main=tiny,
            methods=("sgd", "adam-lawn"),
            trials=1,
            seeds=(1, 2),
            compare_seeds=(1, 2),
            fixed_free=(1.0,),
            onset_rules=ONSET_RULES[:1],
            reach_params=REACH_PARAMS[:2],
            reach_cnn={**tiny, "model": "cnn_bn", "free_epochs": 0.5},
            reach_cnn_methods=(),
            quick=True,
        )
    return Setup(
        main=MAIN,
        methods=METHODS,
        trials=10,
        seeds=(1, 2, 3, 4, 5),
        compare_seeds=(1, 2, 3),
        fixed_free=(3.0, 10.0, 15.0),
        onset_rules=ONSET_RULES,
        reach_params=REACH_PARAMS,
        reach_cnn=REACH_CNN,
        reach_cnn_methods=("adam-lawn",),
        reach_cnn_seeds=(1, 2),
        reach_mlp_methods=("adam-lawn",),
    )


def base_config(values: dict, root: str, **extra) -> TrainConfig:
    """The trials' base: the setting's flags, one thread, no progress bar, no curvature probes
    (a trial is judged on validation accuracy alone)."""
    return config_from_flags(
        {**values, "root": root, "threads": 1, "progress": False, "curvature": False, "seed": 0, **extra}
    )


@dataclass
class Planned:
    """A run the reproduction needs: its stage, what it stands for on the page, its configuration."""

    stage: str
    cfg: TrainConfig
    labels: dict = field(default_factory=dict)  # method, variant, model: the page's groups


# --- the studies --------------------------------------------------------------------------------


def _tune():
    from .. import tune  # imported when needed: the analysis and the page do without Optuna

    return tune


def study_names(s: Setup, root: str) -> dict[str, str]:
    tune = _tune()
    base = base_config(s.main, root)
    return {method: tune.study_name(base, method) for method in s.methods}


def load_studies(s: Setup, root: str) -> dict[str, object]:
    """Method -> its Optuna study in the store's storage, for the methods whose study exists."""
    import optuna

    tune = _tune()
    if not Path(root).exists():
        return {}
    storage = tune.open_storage(tune.storage_url(root))
    found = {}
    for method, name in study_names(s, root).items():
        try:
            found[method] = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # no such study yet
            continue
    return found


def best_configs(s: Setup, root: str) -> dict[str, TrainConfig]:
    """Method -> the configuration of its study's best trial (validation accuracy), for studies
    with a completed trial."""
    tune = _tune()
    out = {}
    for method, study in load_studies(s, root).items():
        if any(t.state.name == "COMPLETE" for t in study.trials):  # type: ignore[attr-defined]
            out[method] = tune.best_config(study.study_name, root)  # type: ignore[attr-defined]
    return out


def _tune_one(args: tuple[dict, str, str, int]) -> tuple[str, int]:
    values, method, root, trials = args
    study = _tune().tune(base_config(values, root), method, trials=trials, root=root, seed=0)
    return method, len(study.trials)


def run_tune(s: Setup, root: str, pool: ProcessPoolExecutor | None) -> None:
    """Each method's study until it holds ``s.trials`` finished trials (a rerun carries on where
    it stands; a study that holds them is left alone), the studies side by side in the pool's
    workers, each study's trials one after another."""
    finished = {
        method: sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)  # type: ignore[attr-defined]
        for method, study in load_studies(s, root).items()
    }
    todo = [(s.main, method, root, s.trials) for method in s.methods if finished.get(method, 0) < s.trials]
    print(f"reproduce: tune: {len(todo)} of {len(s.methods)} studies to run to {s.trials} trials", flush=True)
    started = time.monotonic()
    for method, n in _pool_map(_tune_one, todo, pool):
        print(f"reproduce: tune: {method}: {n} trials in its study", flush=True)
    print(f"reproduce: tune: {time.monotonic() - started:.0f} s wall", flush=True)


# --- the runs after tuning ----------------------------------------------------------------------


def _variant(cfg: TrainConfig, stage: str, method: str, tag: str, seed: int, **changes) -> TrainConfig:
    name = f"repro-{stage}-{method}-{tag}-s{seed}" if tag else f"repro-{stage}-{method}-s{seed}"
    return dataclasses.replace(cfg, seed=seed, name=name, progress=False, threads=1, **changes).resolved()


def plan_seeds(s: Setup, best: dict[str, TrainConfig]) -> list[Planned]:
    """Every method at its best setting, seed outermost (a stage cut short still covers every method)."""
    out = []
    for seed in s.seeds:
        for method, cfg in best.items():
            probes = dataclasses.replace(cfg.probes, curvature=True, budget=CURVATURE_BUDGET)
            run = _variant(cfg, "seeds", method, "", seed, probes=probes)
            out.append(Planned("seeds", run, _labels(method)))
    return out


def _free_tag(free: float | str) -> str:
    return f"free{free:g}" if not isinstance(free, str) else free


def plan_onset(s: Setup, best: dict[str, TrainConfig]) -> list[Planned]:
    """Each LAWN method at its best setting, with each fixed free phase and each rule setting."""
    out = []
    for seed in s.compare_seeds:
        for method in (m for m in LAWN_METHODS if m in best):
            cfg = best[method]
            for free in s.fixed_free:
                run = _variant(cfg, "onset", method, _free_tag(free), seed, free_epochs=free)
                out.append(
                    Planned("onset", run, _labels(method, variant=f"fixed, {free:g} epoch{'s' if free != 1 else ''}"))
                )
            for i, (label, flags) in enumerate(s.onset_rules):
                run = _variant(cfg, "onset", method, f"rule{i}", seed, **flags)
                out.append(Planned("onset", run, _labels(method, variant=label)))
    return out


def plan_reach(s: Setup, best: dict[str, TrainConfig], root: str) -> list[Planned]:
    """lawn_params compared on the MLP (each of ``reach_mlp_methods`` at its best setting) and on the BatchNorm
    CNN (each of ``reach_cnn_methods`` at the optimizer's defaults on the CNN's setting: the MLP's
    tuned LRs are no guide to another model)."""
    out = []
    for seed in s.compare_seeds:
        for method in (m for m in s.reach_mlp_methods if m in best):
            for params in s.reach_params:
                run = _variant(best[method], "reach", method, f"mlp-{params}", seed, lawn_params=params)
                out.append(Planned("reach", run, _labels(method, model="MLP", variant=params)))
    for seed in s.reach_cnn_seeds:
        for method in s.reach_cnn_methods:
            cnn = _tune().method_config(method, base_config(s.reach_cnn, root))
            for params in s.reach_params:
                run = _variant(cnn, "reach", method, f"cnn-{params}", seed, lawn_params=params)
                out.append(Planned("reach", run, _labels(method, model="BN CNN", variant=params)))
    return out


def _labels(method: str, **more: str) -> dict:
    return {"method": DISPLAY.get(method, method), **more}


def plan_stage(stage: str, s: Setup, root: str, best: dict[str, TrainConfig] | None = None) -> list[Planned]:
    best = best_configs(s, root) if best is None else best
    if stage == "seeds":
        return plan_seeds(s, best)
    if stage == "onset":
        return plan_onset(s, best)
    if stage == "reach":
        return plan_reach(s, best, root)
    return []


# --- what the store holds -----------------------------------------------------------------------


def same_config(recorded: dict, cfg: TrainConfig) -> bool:
    """Whether a run's recorded config computes what ``cfg`` would (keys that only say where and
    how it ran, NOT_COMPUTED, may differ). A key the record lacks was added to the trainer after
    the run: it ran as that key's default does (``config_from_record`` reads it so too)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_COMPUTED:
            continue
        mine = getattr(cfg, f.name)
        if dataclasses.is_dataclass(mine):  # nested (the probes): its keys one by one, the same way
            theirs = {**dataclasses.asdict(type(mine)()), **(recorded.get(f.name) or {})}
            if canonical(theirs) != canonical(dataclasses.asdict(mine)):
                return False
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if canonical(recorded.get(f.name, default)) != canonical(mine):
            return False
    return True


def ended_runs(store: RunStore, planned: list[Planned]) -> dict[str, str]:
    """Planned run name -> the id of its latest run of the same configuration that ended (ENDED)."""
    if not Path(str(store.root)).exists():
        return {}
    runs = store.runs(status=ENDED)
    found: dict[str, str] = {}
    if runs.empty:
        return found
    wanted = {p.cfg.name: p.cfg for p in planned}
    for row in runs.sort_values("created_at").itertuples():
        cfg = wanted.get(row.name)
        if cfg is not None and same_config((store.run_info(row.run_id) or {}).get("config") or {}, cfg):
            found[row.name] = row.run_id
    return found


# --- training -----------------------------------------------------------------------------------


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    _generate_once()


def _generate_once() -> None:
    """MNIST-1D is generated afresh at each load (seconds of CPU, the same samples every time); a
    worker that trains many runs generates it once and gives each run its own copy."""
    from .. import data

    generated = functools.lru_cache(maxsize=1)(data._mnist1d)
    data._mnist1d = lambda: tuple(t.clone() for t in generated())


def _train_one(cfg: TrainConfig) -> tuple[str, str, float | None]:
    from ..train import train

    try:
        result = train(cfg)
        return cfg.name or "", result.status, result.test_acc
    except Exception as exc:  # noqa: BLE001 - recorded in run.json where a run was made; the stage goes on
        print(f"reproduce: {cfg.name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return cfg.name or "", "failed", None


@contextlib.contextmanager
def workers(parallel: int) -> Iterator[ProcessPoolExecutor | None]:
    """``parallel`` worker processes for every stage of a regeneration (each imports torch and
    generates the data once, then trains run after run with one thread); None for 1: in this process."""
    if parallel <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(parallel, get_context("spawn"), initializer=_init_worker)
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _pool_map(fn, items: list, pool: ProcessPoolExecutor | None):
    """``fn`` over ``items`` in the pool, results as they come; in this process without one."""
    if pool is None:
        yield from map(fn, items)
        return
    futures = [pool.submit(fn, item) for item in items]
    for future in as_completed(futures):
        yield future.result()


def run_stage(root: str, planned: list[Planned], pool: ProcessPoolExecutor | None) -> None:
    """Train the planned runs the store does not hold ended, in the pool."""
    done = ended_runs(RunStore(root), planned)
    todo = list({p.cfg.name: p.cfg for p in planned if p.cfg.name not in done}.values())
    stage = planned[0].stage if planned else "?"
    print(f"reproduce: {stage}: {len(planned)} runs planned, {len(done)} ended already, {len(todo)} to run", flush=True)
    started = time.monotonic()
    for i, (name, status, acc) in enumerate(_pool_map(_train_one, todo, pool), 1):
        acc_text = "" if acc is None else f", test_acc {acc:.4f}"
        print(f"reproduce: {stage}: [{i}/{len(todo)}] {name}: {status}{acc_text}", flush=True)
    if todo:
        print(f"reproduce: {stage}: {time.monotonic() - started:.0f} s wall", flush=True)
