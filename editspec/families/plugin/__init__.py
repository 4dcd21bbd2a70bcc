"""The plugin family (ike, retrieval): an edit memory, a scope router and a prompt template for API models."""
