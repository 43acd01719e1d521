"""Experiments on top of the method and the micro world: prompt sets, scoring, beta sweeps, reports, the demo.

The engine (perfusion.*) never imports this package; it imports both the engine and perfusion.world.
"""
