"""Verify mcp-broker's access tokens in any MCP server (the ``mcp-broker-verifier`` distribution)."""
