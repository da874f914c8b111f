"""Adapters between lawn-monitor and the frameworks and trackers people already use: ``lightning``
(a Lightning ``Callback``), ``huggingface`` (a ``transformers.TrainerCallback``), ``tensorboard``
(import and export of event files) and ``trackers`` (forwarding to W&B or MLflow). Each module
imports its framework, so import the one you use; the rest of lawn_monitor never imports them. A
loop of your own, or Accelerate's, needs no adapter: ``monitor.attach(optimizer)`` (see docs/integrations.md).
"""
