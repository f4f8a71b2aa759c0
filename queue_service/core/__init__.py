"""The queue's core: jobs, policy, the service, the worker and its threads.

Nothing here imports Flask, nor any store: the web layer (``queue_service.web``)
drives the core, and the core drives a store through the contract it defines in
``core.store``, which ``queue_service.stores`` implements.
"""
