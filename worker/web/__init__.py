"""HTTP: metrics, health, readiness and the read API, and the read side's views."""
