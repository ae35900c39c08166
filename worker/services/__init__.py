"""The long-running services: the consume -> apply -> publish loop, the decay sweeper with
its chores (quantile upkeep, the marking pass) and the rebuild."""
