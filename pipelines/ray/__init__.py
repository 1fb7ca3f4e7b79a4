"""The Ray layer: runtime set-up, placement and sharding, the thin actors over the classes below."""
