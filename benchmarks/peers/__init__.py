"""Side-by-side peer benchmarks: the same models served by LitServe and PyTriton.

``workloads``, ``litserve_server`` and ``pytriton_server`` run inside the peers' own
virtual environments (created by ``venvs``); ``clients`` is the one load generator,
run from the project's environment, that calls every server over its own protocol.
"""
