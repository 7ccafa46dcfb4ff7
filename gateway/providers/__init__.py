"""llm-mesh gateway/providers."""
