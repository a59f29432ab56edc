"""The self-finishing image: the launcher that is an IR image's entrypoint.

``install`` puts it in the image (at build); ``stub`` runs at every start (the hot path: the
target, the checked cache entry, ``exec``); ``finish`` makes a missing entry (the node tag over
the registry API, else a bake here); ``cache`` is the entry store (lock, atomic rename, digests).
"""
