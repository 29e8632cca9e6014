"""What stands above both adapters: the ``avatar-forge`` command line (:mod:`avatar_forge.cli`),
which drives the batch job (``jobs``) and the online API (``serve``), and the metrics both record
(:mod:`avatar_forge.metrics`). ``jobs`` and ``serve`` import this package's metrics, never each other."""
