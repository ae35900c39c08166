"""rfm-worker: real-time RFM customer segmentation from Kafka order events."""

__version__ = "0.2.0"
