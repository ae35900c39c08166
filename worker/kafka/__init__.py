"""The Kafka side: clients built from the settings, deliveries with acknowledgements, the
outbox relay and dead-letter records."""
