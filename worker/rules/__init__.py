"""The rules: pure scoring, segments, profiles, validation and the per-customer state
model; no I/O (neither Kafka nor Redis is imported here)."""
