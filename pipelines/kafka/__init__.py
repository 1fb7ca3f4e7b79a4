"""Kafka I/O: clients and topics, offsets and the commit protocol, publishing and reassembling segments."""
