"""The long-running services: the consume -> apply -> publish loop, the decay sweeper and
the rebuild."""
