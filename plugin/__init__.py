"""``kubectl smtpgate``: the kubectl plugin that shows what the model makes of a cluster's
connectors (permissions, which connector a client lands on, status at a glance)."""
