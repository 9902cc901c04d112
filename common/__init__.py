"""The bottom layer: what every other package may import (typed domain errors).

Imports nothing from ``graph`` or ``services``; ``graph`` and ``services`` both import from here.
"""
