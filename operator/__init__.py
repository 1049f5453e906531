"""The kopf operator: turns TransportServer, ReceiveConnector and AcceptedDomain resources
and TLS Secrets into each server's receiver config, workload and Services."""
