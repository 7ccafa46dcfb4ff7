"""The `llm-mesh` command: starts services and runs the operator tools."""
