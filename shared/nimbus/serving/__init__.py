"""Serving any registry model: signature checks, the lightest faithful form, live swap on alias moves.

``models`` loads one version (:func:`nimbus.serving.models.load`, batch's loader too), ``signature``
checks records against it, ``forms`` are the ways it runs, ``live`` keeps a process's loaded models in
step with the registry's aliases, and ``hooks`` tells those processes when an alias moves (importing it
registers the governance hook; the composition roots do).
"""
