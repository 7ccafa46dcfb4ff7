"""llm-mesh gateway."""
