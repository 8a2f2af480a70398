"""Image decoding and the per-image descriptors computed from pixels."""
