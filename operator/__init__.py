"""The operator: watches TransportServer, ReceiveConnector and AcceptedDomain resources and
TLS Secrets, and turns them into each server's receiver config, workload and Services."""
