"""Integration-test harness: real services (Kafka, databases) for end-to-end tests."""
