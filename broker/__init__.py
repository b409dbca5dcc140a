"""mcp-broker: the OAuth 2.1 authorization server in front of MCP servers."""

__version__ = "0.1.0"
