"""llm-mesh scheduler."""
