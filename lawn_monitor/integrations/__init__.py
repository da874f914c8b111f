"""Adapters that add a Monitor to the loops of training frameworks: ``lightning`` (a Lightning
``Callback``) and ``huggingface`` (a ``transformers.TrainerCallback``). Each module imports its
framework, so import the one you use; the rest of lawn_monitor never imports them. A loop of
your own, or Accelerate's, needs no adapter: ``monitor.attach(optimizer)`` (see the README).
"""
