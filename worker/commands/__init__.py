"""Commands besides `run`: the demo, produce (backfill) and the JSON Schemas."""
