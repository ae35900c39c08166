"""Commands besides `run`: the demo, produce (backfill), sweep --once and the JSON Schemas."""
