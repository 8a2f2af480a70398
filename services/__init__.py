"""The four services of image-dedup, each one a thin handler over the pure core (``shared``)."""

ROLES = ("watcher", "hasher", "matcher", "actuator")
