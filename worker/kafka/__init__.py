"""The Kafka side: clients built from the settings, deliveries with acknowledgements, the
outbox relay and dead-letter records."""

# What a call to the broker raises when it fails (worker/commands/context.py: Kafka
# unreachable; worker/services/checkpoint.py: a commit or watermarks), without importing the
# client library outside this package.
from confluent_kafka import KafkaException as KafkaException
