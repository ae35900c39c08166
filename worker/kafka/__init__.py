"""The Kafka side: clients built from the settings, deliveries with acknowledgements, the
outbox relay and dead-letter records."""

# What a command catches when Kafka is unreachable (worker/commands/context.py), without
# importing the client library outside this package.
from confluent_kafka import KafkaException as KafkaException
