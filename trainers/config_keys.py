"""Which of the trainer's config keys say where and how a run ran, or what was measured beside
it, not what it computed. ``RunStore.summary`` (the paper's Table 2) averages runs that differ
only in these and the seed as repeats of one experiment; every other key splits a group.

The store finds this list through the entry-point group ``lawn_monitor.not_computed``
(pyproject.toml), so the core never imports the trainers. The module imports nothing: the
dashboard loads it without torch.

The probe keys are here because the Monitor leaves the training untouched (weights, RNG,
optimizer state: tested bit for bit): the trainer saves them nested under "probes" (a
ProbeConfig) beside "probe_size"; runs saved before that, and older ones ("gn_every"), hold them
flat. The trainer's derived keys (free_steps, steps_per_epoch, ...) follow from the keys that
split already.
"""

NOT_COMPUTED = frozenset(
    {
        "name",
        "root",
        "device",
        "progress",
        "data_root",
        "logdir",
        "run_dir",
        "download",
        "flush_secs",
        "workers",
        "threads",
        "resume",
        "recipe",
        "compile",
        "channels_last",
        "world_size",
        "probes",
        "probe_size",
        "probe_every",
        "curvature",
        "gn_every",
        "gn_points",
        "hessian_points",
        "hessian_probes",
        "sharpness_points",
        "sharpness_iters",
        "curvature_budget",
        "free_steps",
        "warmup_steps",
        "free_warmup_steps",
        "auto_switch",
        "steps_per_epoch",
        "num_train",
        "num_val",
        "schedule",
    }
)
