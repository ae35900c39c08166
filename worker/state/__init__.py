"""The Redis state: the key layout, the one atomic commit path (Lua in lua/), applied
offsets, the outbox and the read side. It knows keys, blobs and scripts."""
