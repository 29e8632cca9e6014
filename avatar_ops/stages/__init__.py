"""The stage layer: the one place that knows how the operators chain.

- :mod:`~avatar_ops.stages.config`: :class:`PipelineConfig` (what every stage computes) and the
  content ids of photos under it;
- :mod:`~avatar_ops.stages.payload`: :class:`Payload`, one photo's state between stages;
- :mod:`~avatar_ops.stages.codec`: payloads as bytes (``.npz`` / JSON / safetensors, never pickle);
- :mod:`~avatar_ops.stages.stage`: :class:`Stage` (``Stage(kind, config).run(payloads)``, with
  per-item isolation) and :func:`chain`, the stages a config runs, in order.

:class:`avatar_ops.pipeline.AvatarPipeline` runs the chain in one process; the Ray Data adapter
(``jobs/stages.py``) and the Serve adapter (``serve/adapter.py``) only turn rows or requests into
payloads, carry them between processes as bytes, and run the same stages.
"""
