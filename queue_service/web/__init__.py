"""The Flask side: the extension, the REST blueprint, the dashboard, metrics, the CLI.

Every surface here reaches the queue through ``state.queue_state()`` and calls
the core's service; none of them reads another's private fields.
"""
