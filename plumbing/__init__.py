"""Cross-service plumbing shared by the gateway, the scheduler and the workers.

Holds only what several services must agree on: the JSON form of the schema, shared settings,
broker topology names and telemetry set-up. Services never import each other.
"""
